"""Best-of-n for Aira, as the authors' own demo does it: sample n answers,
score each (question, answer) pair with RewardModelPT, drop those that
ToxiGuardrailPT scores below 5 (its logit: higher is less toxic), and answer
with the highest reward left.

Either scorer may be missing (`None`): without the reward model candidates
keep their sampling order; without the guardrail none is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .classification import score_pairs
from .sampling import Sampling, for_completion
from .loading import Loaded

TOXICITY_THRESHOLD = 5.0   # the authors' demo keeps candidates scoring >= 5
MAX_CANDIDATES = 4


@dataclass(frozen=True)
class Candidate:
    text: str
    reward: float | None = None
    toxicity: float | None = None   # ToxiGuardrailPT's score: higher is less toxic

    @property
    def kept(self) -> bool:
        return self.toxicity is None or self.toxicity >= TOXICITY_THRESHOLD


def score(question: str, texts: Sequence[str], reward: Loaded | None,
          guard: Loaded | None) -> list[Candidate]:
    """Each answer with the scores of whichever scorers are there."""
    pairs = [(question, t) for t in texts]
    rewards = score_pairs(reward, pairs) if reward is not None else [None] * len(pairs)
    toxicity = score_pairs(guard, pairs) if guard is not None else [None] * len(pairs)
    return [Candidate(t, r, x) for t, r, x in zip(texts, rewards, toxicity)]


def pick(candidates: Sequence[Candidate]) -> int | None:
    """Index of the kept candidate with the highest reward (the first kept
    one when there are no rewards); None when every candidate was dropped."""
    kept = [i for i, c in enumerate(candidates) if c.kept]
    if not kept:
        return None
    def rank(i):
        r = candidates[i].reward
        return (r if r is not None else float("-inf"), -i)   # ties go to the earlier one
    return max(kept, key=rank)


def samplings(s: Sampling, n: int) -> list[Sampling]:
    """Settings for each of n candidates (`sampling.for_completion`)."""
    return [for_completion(s, i) for i in range(n)]
