"""The served models, as data.

Every model the app can serve is one `ModelSpec` in `REGISTRY`. Adding a model
is one entry here (plus, if it has a new shape, one entry in
`standins.SHAPES`). Facts come from the model cards and the models' published
configs; the comment on each value says where it comes from when it is not
obvious.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

# Tasks, i.e. which engine module serves the entry.
GENERATE, CHAT, CLASSIFY, LABEL_SCORE, SCORE = TASKS = (
    "generate", "chat", "classify", "label-score", "score")


@dataclass(frozen=True)
class ModelSpec:
    key: str                      # stable id used by the UI, the API and settings
    title: str                    # what people see
    hub_id: str
    task: str
    model_class: str              # transformers class name
    shape: str                    # key into standins.SHAPES
    revision: str = "main"
    revisions: tuple[str, ...] = ("main",)
    prompt_format: str = "plain"  # key into formats.FORMATS
    labels: tuple[str, ...] = ()  # id -> label, in id order
    inputs: tuple[str, ...] = ("text",)   # named text fields the format joins
    max_input_tokens: int = 2048
    defaults: Mapping[str, float | int | bool] = field(default_factory=dict)
    adapter_setting: str | None = None    # env var naming a PEFT adapter id/dir
    card_url: str = ""
    system_prompt: str = ""               # sent with every request (label scoring)
    # Best-of-n for a chat model: the registry keys of the scorer that ranks
    # its candidates and of the guardrail that drops toxic ones.
    reward_model: str | None = None
    guard_model: str | None = None
    # A model fine-tuned here (custom.py): loaded from this folder only,
    # never from the hub and never replaced by a stand-in.
    directory: str | None = None

    @property
    def is_generative(self) -> bool:
        return self.task in (GENERATE, CHAT, LABEL_SCORE)


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(dict(d))


# The TeenyTinyLlama cards' widget ("inference: parameters"); the later
# generation_config upload (temperature 0.1, top_k 10, top_p 0.1) is
# unconfirmed, so the demo follows the card people read.
TTL_DEFAULTS = _frozen(dict(
    repetition_penalty=1.2, temperature=0.2, top_k=20, top_p=0.2,
    max_new_tokens=150, do_sample=True))

# Aira-2's card widget.
AIRA_DEFAULTS = _frozen(dict(
    repetition_penalty=1.2, temperature=0.2, top_k=30, top_p=0.3,
    max_new_tokens=200, do_sample=True))

# Training checkpoints are published as revisions named stepNNNNNN. The
# 160m perplexities are given at 100k..400k steps (authors' EVAL.md); the
# 460m table runs from 100k to 1.2M steps in 100k increments.
TTL_160M_REVISIONS = ("main",) + tuple(f"step{k}00000" for k in range(1, 5))
TTL_460M_REVISIONS = ("main",) + tuple(f"step{k}00000" for k in range(1, 13))

# The seed's system prompt, verbatim (seed 002).
TWEET_SYSTEM_PROMPT = (
    'You are a tweet sentiment classifier. For each tweet input, analyze its '
    'sentiment and output exactly one word: "negative", "neutral", or '
    '"positive". Do not include any extra text.')

# Label maps and input formats of the fine-tunes (their cards' training code).
TTL_TASKS = {
    # key suffix: (title, labels, prompt format, input fields)
    "IMDB": ("movie-review sentiment", ("NEGATIVE", "POSITIVE"), "plain", ("text",)),
    "HateBR": ("toxicity", ("NONTOXIC", "TOXIC"), "plain", ("text",)),
    "AgNews": ("news topic", ("MUNDO", "ESPORTES", "NEGÓCIOS", "TECNOLOGIA"),
               "title-text", ("title", "text")),
    "FaQuAD-NLI": ("answer suitability", ("UNSUITABLE", "SUITABLE"),
                   "question-answer", ("question", "answer")),
    "Assin2": ("entailment", ("UNENTAILED", "ENTAILED"),
               "premise-hypothesis", ("premise", "hypothesis")),
}


def _specs() -> list[ModelSpec]:
    hub = "https://huggingface.co/"
    specs = [
        ModelSpec(
            key="ttl-160m", title="TeenyTinyLlama-160m",
            hub_id="nicholasKluge/TeenyTinyLlama-160m", task=GENERATE,
            model_class="LlamaForCausalLM", shape="ttl-160m",
            revisions=TTL_160M_REVISIONS, defaults=TTL_DEFAULTS,
            card_url=hub + "nicholasKluge/TeenyTinyLlama-160m"),
        ModelSpec(
            key="ttl-460m", title="TeenyTinyLlama-460m",
            hub_id="nicholasKluge/TeenyTinyLlama-460m", task=GENERATE,
            model_class="LlamaForCausalLM", shape="ttl-460m",
            revisions=TTL_460M_REVISIONS, defaults=TTL_DEFAULTS,
            card_url=hub + "nicholasKluge/TeenyTinyLlama-460m"),
        ModelSpec(
            key="aira-2-124m", title="Aira-2-portuguese-124M",
            hub_id="nicholasKluge/Aira-2-portuguese-124M", task=CHAT,
            model_class="GPT2LMHeadModel", shape="aira-124m",
            prompt_format="aira", max_input_tokens=1024, defaults=AIRA_DEFAULTS,
            reward_model="reward-pt", guard_model="toxiguard-pt",
            card_url=hub + "nicholasKluge/Aira-2-portuguese-124M"),
        # Aira's authors' demo reranks candidates with these two scorers: one
        # logit each, scoring a (question, answer) pair.
        ModelSpec(
            key="reward-pt", title="RewardModelPT",
            hub_id="nicholasKluge/RewardModelPT", task=SCORE,
            model_class="BertForSequenceClassification", shape="bert-base",
            inputs=("question", "answer"), max_input_tokens=512,
            card_url=hub + "nicholasKluge/RewardModelPT"),
        ModelSpec(
            key="toxiguard-pt", title="ToxiGuardrailPT",
            hub_id="nicholasKluge/ToxiGuardrailPT", task=SCORE,
            model_class="BertForSequenceClassification", shape="bert-base",
            inputs=("question", "answer"), max_input_tokens=512,
            card_url=hub + "nicholasKluge/ToxiGuardrailPT"),
        # The seed does not name the adapter's repository: the operator sets
        # TTL_TWEET_ADAPTER to its hub id or a local directory.
        ModelSpec(
            key="tinyllama-tweet", title="TinyLlama-1.1B-Chat + tweet-sentiment LoRA",
            hub_id="TinyLlama/TinyLlama-1.1B-Chat-v1.0", task=LABEL_SCORE,
            model_class="LlamaForCausalLM", shape="tinyllama-1.1b",
            prompt_format="zephyr-chat", labels=("negative", "neutral", "positive"),
            max_input_tokens=2048, adapter_setting="TTL_TWEET_ADAPTER",
            system_prompt=TWEET_SYSTEM_PROMPT,
            defaults=_frozen(dict(max_new_tokens=8, do_sample=False)),
            card_url=hub + "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
    ]
    for size in ("160m", "460m"):
        for task, (what, labels, fmt, fields) in TTL_TASKS.items():
            hub_id = f"nicholasKluge/TeenyTinyLlama-{size}-{task}"
            specs.append(ModelSpec(
                key=f"ttl-{size}-{task.lower()}",
                title=f"TeenyTinyLlama-{size}-{task} ({what})",
                hub_id=hub_id, task=CLASSIFY,
                model_class="LlamaForSequenceClassification", shape=f"ttl-{size}",
                prompt_format=fmt, labels=labels, inputs=fields,
                # The fine-tunes truncate at 256 tokens (their cards' code).
                max_input_tokens=256, card_url=hub + hub_id))
    return specs


REGISTRY: Mapping[str, ModelSpec] = MappingProxyType({s.key: s for s in _specs()})
# What a visitor can load without touching a dropdown: each tab's default
# model and the two scorers of the chat's best-of-n.
DEFAULT_KEYS = ("ttl-160m", "aira-2-124m", "ttl-160m-imdb", "reward-pt", "toxiguard-pt")


def by_task(*tasks: str) -> list[ModelSpec]:
    return [s for s in REGISTRY.values() if s.task in tasks]


def get_spec(key: str) -> ModelSpec:
    """The entry for `key`; a clear error for anything else (keys come from
    API clients too)."""
    try:
        return REGISTRY[key]
    except (KeyError, TypeError):
        known = ", ".join(REGISTRY)
        raise KeyError(f"Unknown model {key!r}. Known models: {known}.") from None
