"""Blind A/B votes and the ratings they give, kept in a SQLite file under
`Settings.data_dir` so that they survive a restart.

A match is issued by the server when a person (or a client) has been shown
two anonymous answers: its id is random and its pair is stored here, so a
vote can only be for a pair that was shown, and only once. What is kept
per match: the two model@checkpoint names, the winner ("A", "B" or "tie")
and the times. The prompt is not kept: people type what they like into a
demo, and the ratings do not need it.

Ratings are a Bradley–Terry fit of all votes, as Chatbot Arena's
leaderboard computes them, on Elo's scale (400 points: 10 to 1 odds).
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from .errors import EngineError

FILE = "votes.sqlite3"
CHOICES = ("A", "B", "tie")
MATCH_ID = re.compile(r"[0-9a-f]{32}")
# Unvoted matches are forgotten after a day: a page left open overnight
# cannot vote, and the file does not grow with matches nobody voted on.
MATCH_KEPT_S = 24 * 3600
BASE, SCALE = 1000.0, 400.0   # Elo's scale: a 400-point lead is 10 to 1 odds
FIT_ROUNDS = 500

SCHEMA = """CREATE TABLE IF NOT EXISTS matches (
    id TEXT PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL, issued REAL NOT NULL,
    winner TEXT, voted REAL)"""


def connect(data_dir: str, file: str, schema: str) -> sqlite3.Connection:
    """A SQLite file of the data directory, with its table made on first use."""
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / file, timeout=10)
    db.execute(schema)
    return db


def _db(data_dir: str) -> sqlite3.Connection:
    return connect(data_dir, FILE, SCHEMA)


def issue(data_dir: str, a: str, b: str) -> str:
    """A new match between `a` (shown as A) and `b` (shown as B): its id."""
    match = uuid.uuid4().hex
    with closing(_db(data_dir)) as db, db:
        db.execute("DELETE FROM matches WHERE winner IS NULL AND issued < ?",
                   (time.time() - MATCH_KEPT_S,))
        db.execute("INSERT INTO matches (id, a, b, issued) VALUES (?, ?, ?, ?)",
                   (match, a, b, time.time()))
    return match


@dataclass(frozen=True)
class Vote:
    match: str
    a: str
    b: str
    winner: str   # "A", "B" or "tie"


def record(data_dir: str, match, choice) -> Vote:
    """The vote `choice` for `match`, stored once; the match's names."""
    if choice not in CHOICES:
        raise EngineError(f"A vote is one of {', '.join(CHOICES)}, got {choice!r}.",
                          title="Invalid vote")
    if not isinstance(match, str) or not MATCH_ID.fullmatch(match.strip()):
        raise EngineError("This is not a match the app issued: start a new match first.",
                          title="Invalid vote")
    match = match.strip()
    with closing(_db(data_dir)) as db, db:
        # One statement: two votes sent at once cannot both be counted.
        done = db.execute("UPDATE matches SET winner = ?, voted = ? WHERE id = ? AND winner IS NULL",
                          (choice, time.time(), match)).rowcount
        row = db.execute("SELECT a, b, winner FROM matches WHERE id = ?", (match,)).fetchone()
    if row is None:
        raise EngineError("This is not a match the app issued (or it is over a day old): "
                          "start a new match.", title="Invalid vote")
    if not done:
        raise EngineError("This match has already been voted on: start a new match.",
                          title="Already voted")
    return Vote(match, *row)


@dataclass(frozen=True)
class Standing:
    model: str      # key@revision
    rating: float
    matches: int
    wins: int
    ties: int
    losses: int


def votes(data_dir: str) -> list[tuple[str, str, str]]:
    """Every vote as (a, b, winner), oldest first."""
    with closing(_db(data_dir)) as db:
        return db.execute("SELECT a, b, winner FROM matches WHERE winner IS NOT NULL "
                          "ORDER BY voted").fetchall()


def standings(data_dir: str) -> list[Standing]:
    """Every model that has been voted on, the highest rated first."""
    return rate(votes(data_dir))


def rate(games: list[tuple[str, str, str]]) -> list[Standing]:
    """A Bradley–Terry fit of `games` (a, b, winner), by the MM algorithm
    (Hunter 2004): a tie is half a win for each side. Each model also ties
    once with a fixed reference player of rating BASE, so that one that
    has only won (or only lost) gets a finite rating and few votes stay
    near BASE."""
    models = sorted({m for a, b, _ in games for m in (a, b)})
    wins = {m: 0.5 for m in models}          # the reference's tie
    count = {m: [0, 0, 0] for m in models}   # wins, ties, losses
    pairs: dict[tuple[str, str], int] = {}
    for a, b, winner in games:
        score = {"A": 1.0, "B": 0.0, "tie": 0.5}[winner]
        wins[a] += score
        wins[b] += 1 - score
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
        for m, s in ((a, score), (b, 1 - score)):
            count[m][{1.0: 0, 0.5: 1, 0.0: 2}[s]] += 1
    strength = {m: 1.0 for m in models}
    for _ in range(FIT_ROUNDS):
        new = {}
        for m in models:
            games_over = 1 / (strength[m] + 1.0)   # the reference, strength 1
            for (a, b), n in pairs.items():
                if m in (a, b):
                    other = b if m == a else a
                    games_over += n / (strength[m] + strength[other])
            new[m] = wins[m] / games_over
        strength = new
    out = [Standing(m, BASE + SCALE * math.log10(strength[m]), sum(count[m]), *count[m])
           for m in models]
    return sorted(out, key=lambda s: (-s.rating, s.model))
