"""The Compare tab's engine side: columns side by side with one seed, within
the memory budget; the training timeline on stand-in checkpoints that learn;
blind A/B votes that are counted once, rated, and kept across a restart."""

from __future__ import annotations

import re

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from inference import api, votes
from inference.errors import EngineError

from conftest import engine_for_tests, free_port, workers_stopped

# A line of the stand-ins' training page: their checkpoints learn it.
SEEN = "A lhama é um animal dos Andes, calmo e curioso, que vive em grupos nas montanhas."


def run(events) -> tuple[api.Plan, dict[int, list]]:
    plan, by_column = next(events), {}
    for item in events:
        by_column.setdefault(item.index, []).append(item.event)
    return plan, by_column


def test_every_column_streams_with_the_same_seed(engine):
    plan, cols = run(api.compare(engine, "A lhama é", ["ttl-160m@step100000", "ttl-460m@main"],
                                 seed=7, temperature=1.0, max_new_tokens=12))
    assert plan.together and plan.seed == 7 and plan.note is None
    for i, (key, revision) in enumerate(plan.columns):
        started, *pieces = cols[i]
        assert (started.key, started.revision) == (key, revision)
        assert started.samplings[0].seed == 7
        assert pieces and pieces[-1].ids


def test_a_drawn_seed_is_shared_and_shown(engine):
    plan, cols = run(api.compare(engine, "A lhama é", ["ttl-160m@main", "ttl-160m@step200000"],
                                 seed=-1, max_new_tokens=4))
    assert plan.seed is not None
    assert {cols[i][0].samplings[0].seed for i in cols} == {plan.seed}


def test_columns_over_the_memory_budget_run_one_after_another(tmp_path):
    # Room for one tiny 460m stand-in's load at a time, not two.
    e = engine_for_tests(data_dir=str(tmp_path), memory_budget_mb=60)
    assert e.load_cost("ttl-460m") <= e.budget < 2 * e.load_cost("ttl-460m")
    events = api.compare(e, "A lhama é", ["ttl-460m@step100000", "ttl-460m@main"],
                         max_new_tokens=8)
    plan = next(events)
    assert not plan.together and "one after another" in plan.note
    order = [item.index for item in events]
    assert order == sorted(order) and set(order) == {0, 1}   # column 1 only after column 0
    assert e.resident() <= e.budget


@pytest.mark.parametrize("columns, says", [
    (["ttl-160m@step1200000", "ttl-160m@main"], "step400000"),   # its checkpoints named
    (["ttl-160m@main", "ttl-160m@main"], "different"),
    (["ttl-160m@main"], "2 to 4"),
    ([f"ttl-460m@step{k}00000" for k in range(1, 6)], "2 to 4"),
    (["ttl-160m-imdb@main", "ttl-160m@main"], "not a text-generation model"),
    ("ttl-160m@main", "2 to 4"),
    ([3, "ttl-160m@main"], "model and a checkpoint"),
])
def test_bad_columns_are_refused_with_a_message(engine, columns, says):
    with pytest.raises(EngineError) as refused:
        next(api.compare(engine, "A lhama é", columns))
    assert says in str(refused.value)


def test_closing_a_compare_stops_every_column(engine):
    events = api.compare(engine, "A lhama é", ["ttl-160m@main", "ttl-460m@main"],
                         max_new_tokens=1000)
    pieces = (item for item in events if not isinstance(item, api.Plan)
              and isinstance(item.event, api.Piece))
    next(pieces), next(pieces)
    events.close()
    assert workers_stopped(2.0)


# -- the training timeline ------------------------------------------------------------
def test_the_timeline_falls_as_training_goes_on_and_is_cached(tmp_path):
    e = engine_for_tests(data_dir=str(tmp_path))
    points = list(api.timeline(e, SEEN, "ttl-160m"))
    assert [p.revision for p in points] == ["step100000", "step200000", "step300000",
                                            "step400000", "main"]
    assert points[0].perplexity > 2 * points[-1].perplexity   # the stand-in learned its page
    assert not any(p.cached for p in points) and all(p.is_standin for p in points)
    e.unload("ttl-160m")
    again = list(api.timeline(e, SEEN, "ttl-160m"))
    assert all(p.cached for p in again) and not e.loaded()   # nothing loaded to answer
    assert [p.perplexity for p in again] == [p.perplexity for p in points]


def test_the_timeline_loads_checkpoints_in_turn_within_the_budget(tmp_path):
    e = engine_for_tests(data_dir=str(tmp_path), memory_budget_mb=120)
    seen = []
    for point in api.timeline(e, "Um texto qualquer.", "ttl-460m"):
        seen.append(sum(m.spec.key == "ttl-460m" for m in e.loaded()))
        assert e.resident() <= e.budget
    assert len(seen) == 13 and max(seen) <= 2   # 13 checkpoints, at most 2 kept at once


# -- blind A/B and votes ------------------------------------------------------------------
def blind(engine, pool=("ttl-160m@main", "ttl-160m@step100000")) -> tuple[api.Plan, str]:
    events = list(api.blind_match(engine, "A lhama é", list(pool), max_new_tokens=4))
    assert isinstance(events[-1], api.Issued)
    return events[0], events[-1].match


def test_a_vote_counts_once_and_names_the_pair_shown(tmp_path):
    e = engine_for_tests(data_dir=str(tmp_path))
    plan, match = blind(e)
    v = api.vote(e, match, "A")
    assert (v.a, v.b) == tuple(api.column_name(c) for c in plan.columns)
    with pytest.raises(EngineError, match="already been voted"):
        api.vote(e, match, "B")
    board = api.leaderboard(e)
    assert [(s.model, s.wins, s.losses) for s in board] == [(v.a, 1, 0), (v.b, 0, 1)]
    assert board[0].rating > board[1].rating


@pytest.mark.parametrize("match, choice, says", [
    ("0" * 32, "A", "not a match the app issued"),
    ("ttl-160m@main", "A", "not a match the app issued"),
    (None, "A", "not a match the app issued"),
    ("issued", "C", "one of A, B, tie"),
])
def test_a_vote_for_a_match_not_shown_is_refused(tmp_path, match, choice, says):
    e = engine_for_tests(data_dir=str(tmp_path))
    if match == "issued":
        match = votes.issue(e.settings.data_dir, "ttl-160m@main", "ttl-460m@main")
    with pytest.raises(EngineError, match=says):
        api.vote(e, match, choice)


def test_a_stopped_match_is_not_issued(tmp_path):
    e = engine_for_tests(data_dir=str(tmp_path))
    events = api.blind_match(e, "A lhama é", ["ttl-160m@main", "ttl-460m@main"],
                             max_new_tokens=1000)
    next(events), next(events)
    events.close()
    assert workers_stopped(2.0)
    assert votes.votes(e.settings.data_dir) == [] and not api.leaderboard(e)


def test_ratings_follow_the_votes():
    games = [("x", "y", "A")] * 6 + [("y", "x", "B")] * 2 + [("y", "z", "A")] * 4 \
        + [("x", "z", "tie")]
    board = votes.rate(games)
    assert [s.model for s in board] == ["x", "y", "z"]
    x = board[0]
    assert (x.matches, x.wins, x.ties, x.losses) == (9, 8, 1, 0)
    even = votes.rate([("x", "y", "A"), ("x", "y", "B")])
    assert abs(even[0].rating - even[1].rating) < 1e-6


def test_votes_survive_a_restart(tmp_path):
    """A vote through one app, then a new engine and a new app over the same
    data folder: the leaderboard there counts it."""
    import app
    first = engine_for_tests(data_dir=str(tmp_path))
    _, match = blind(first)
    api.vote(first, match, "tie")
    second = engine_for_tests(data_dir=str(tmp_path))
    demo = app.build(second)
    port = free_port()
    app.launch(demo, second, server_name="127.0.0.1", server_port=port,
               prevent_thread_lock=True, quiet=True)
    try:
        board, csv_file = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            api_name="/leaderboard")
    finally:
        demo.close()
    assert [row[-2] for row in board["data"]] == [1, 1]   # one tie each
    assert "ties" in open(csv_file).readline()


# -- through the API, as a client drives it ----------------------------------------------
def test_compare_timeline_and_a_vote_through_gradio_client(client):
    *texts, figures, _, record = client.predict(
        "A lhama é", ["ttl-160m@step100000", "ttl-460m@main"], max_new_tokens=6,
        api_name="/compare")
    assert texts[0] and texts[1] and texts[2:] == ["", ""]
    for name in ("ttl-160m@step100000", "ttl-460m@main"):   # each column's own tokens/s
        assert re.search(rf"\| {name} \| \d+ \| [\d.]+ s \| \*\*[\d.]+\*\* \|", figures), figures
    assert [(c["model"], c["revision"]) for c in record["columns"]] == [
        ("ttl-160m", "step100000"), ("ttl-460m", "main")]

    _, table, summary = client.predict(SEEN, "ttl-160m", api_name="/timeline")
    assert [row[0] for row in table["data"]] == ["step100000", "step200000", "step300000",
                                                 "step400000", "main"]
    assert [row[2] for row in table["data"]][:4] == ["24.52", "20.58", "16.98", "16.41"]
    assert "5 of 5 checkpoints" in summary

    a, b, match, _ = client.predict("A lhama é", ["ttl-160m@main", "ttl-460m@main"],
                                    max_new_tokens=4, api_name="/blind_match")
    assert a and b and match
    reveal, board, _ = client.predict(match, "B", api_name="/vote")
    assert "A was" in reveal and {row[1] for row in board["data"]} >= {"ttl-160m@main",
                                                                      "ttl-460m@main"}
    with pytest.raises(AppError, match="already been voted"):
        client.predict(match, "A", api_name="/vote")



@pytest.mark.parametrize("api_name, args, says", [
    ("/compare", ("   ", ["ttl-160m@main", "ttl-460m@main"]), "Please type some"),
    ("/compare", ("A lhama", ["ttl-160m@main"]), "2 to 4"),
    ("/compare", ("A lhama", ["ttl-160m@main", "ttl-160m@step900000"]), "ttl-160m@step900000"),
    ("/timeline", ("Um texto.", "ttl-160m-imdb"), "ttl-160m-imdb"),
    ("/blind_match", ("A lhama", ["ttl-160m@main"]), "at least 2"),
    ("/vote", ("0" * 32, "A"), "not a match the app issued"),
    ("/vote", ("", "A"), "Start a blind match"),
])
def test_bad_requests_get_a_message(client, api_name, args, says):
    with pytest.raises(AppError, match=says):
        client.predict(*args, api_name=api_name)
