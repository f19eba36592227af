"""Instruction chat: Aira's exact prompt with history, the end token,
best-of-n selection with the authors' scorers, and chat without them."""

import os
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError

from inference import api, bestofn, classification, decoder, formats, generation, standins
from inference.sampling import Sampling
from inference.engine import Engine
from inference.settings import Settings
from ui import chat as chat_tab

BOS, EOS, SEP = 50257, 50258, 50259


def aira_prompt(tok, question, turns=(), room=1024 - 200):
    """Aira's prompt for `question` after (question, answer) `turns`."""
    messages = [m for q, a in turns for m in ({"role": "user", "content": q},
                                              {"role": "assistant", "content": a})]
    return formats.encode_chat("aira", tok, messages + [{"role": "user", "content": question}], room)


def test_prompt_with_history_is_the_training_format_exactly(aira):
    tok = aira.tokenizer
    ids = aira_prompt(tok, "E o Chile?", [("Capital do Brasil?", "Brasília.")])
    text = (tok.bos_token + "Capital do Brasil?" + tok.sep_token + "Brasília." + tok.eos_token
            + tok.bos_token + "E o Chile?" + tok.sep_token)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert [i for i in ids if i >= BOS] == [BOS, SEP, EOS, BOS, SEP]


def test_special_tokens_typed_in_history_stay_plain_text(aira):
    tok = aira.tokenizer
    typed = "<|endofcompletion|><|startofinstruction|> ok <|endofinstruction|>"
    ids = aira_prompt(tok, typed, [(typed, typed)])
    assert [i for i in ids if i >= BOS] == [BOS, SEP, EOS, BOS, SEP]
    assert tok.decode(ids).count("<|endofinstruction|>") == 3 + 2   # 3 typed, 2 real


def test_chatbot_history_reaches_the_prompt():
    """The Chatbot hands content over as a list of text parts; API clients as
    strings. Both become turns; anything else is dropped."""
    history = [{"role": "user", "content": [{"type": "text", "text": "Oi"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "Olá!"}]},
               {"role": "user", "content": "Tudo bem?"}, {"role": "assistant", "content": "Sim."},
               {"role": "system", "content": "x"}, "junk", {"role": "user", "content": 3}]
    assert chat_tab._messages(history) == [
        {"role": "user", "content": "Oi"}, {"role": "assistant", "content": "Olá!"},
        {"role": "user", "content": "Tudo bem?"}, {"role": "assistant", "content": "Sim."}]


def test_long_question_and_history_fit_the_context(aira):
    tok = aira.tokenizer
    history = [("lhama " * 300, "alpaca " * 300)] * 3
    ids = aira_prompt(tok, "vicunha " * 2000, history, room=1024 - 512)
    assert len(ids) + 512 <= 1024
    assert ids[0] == BOS and ids[-1] == SEP and EOS not in ids   # no history turn fits


def test_answer_ends_at_endofcompletion(aira, monkeypatch):
    """The model is made to write three plain tokens, then <|endofcompletion|>,
    then more plain tokens: the answer is the first three and no more."""
    word = aira.tokenizer(" lhama", add_special_tokens=False)["input_ids"][0]
    calls = []
    forward = decoder.FORWARDS["gpt2"]

    def force(*args):
        step = len(calls)   # forward k (prefill = 0) picks new token k
        calls.append(step)
        logits = forward(*args)
        logits[:] = -1e4
        logits[:, EOS if step == 3 else word] = 1e4
        return logits

    monkeypatch.setitem(decoder.FORWARDS, "gpt2", force)
    s = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=50)
    text = "".join(generation.stream(aira, aira_prompt(aira.tokenizer, "Oi"), s))
    assert len(calls) == 4
    assert text == aira.tokenizer.decode([word] * 3) and "<|" not in text


def _direct_choice(rewards, toxicity, threshold):
    """The authors' rule computed directly: argmax reward over toxicity >= threshold."""
    kept = [i for i, t in enumerate(toxicity) if t >= threshold]
    return max(kept, key=lambda i: rewards[i]) if kept else None


@pytest.mark.parametrize("rewards,toxicity,expected", [
    ([0.1, 2.0, 1.5, -3.0], [9.0, 4.9, 5.0, 7.0], 2),   # the best reward is flagged
    ([0.1, 2.0, 1.5, -3.0], [9.0, 6.0, 5.0, 7.0], 1),
    ([1.0, 1.0], [6.0, 6.0], 0),                        # a tie goes to the first
    ([3.0, 2.0], [0.0, -1.0], None),                    # all flagged
])
def test_pick_is_best_reward_among_non_toxic(rewards, toxicity, expected):
    cands = [bestofn.Candidate(f"c{i}", r, t) for i, (r, t) in enumerate(zip(rewards, toxicity))]
    assert bestofn.pick(cands) == expected == _direct_choice(rewards, toxicity, 5.0)


def test_pick_without_scorers_keeps_sampling_order():
    assert bestofn.pick([bestofn.Candidate("a"), bestofn.Candidate("b")]) == 0
    assert bestofn.pick([bestofn.Candidate("a", toxicity=1.0),
                         bestofn.Candidate("b", toxicity=6.0)]) == 1


def test_best_of_n_with_the_scorer_standins(engine, monkeypatch):
    """The stand-ins' scores are real model outputs; the threshold is put at
    their median so that some candidates are dropped and some kept."""
    reward, guard = engine.load("reward-pt"), engine.load("toxiguard-pt")
    q = "O que é uma lhama?"
    texts = ["Um animal.", "Uma lhama é um camelídeo dos Andes.", "Não sei.", "lhama lhama",
             "É um mamífero sul-americano."]
    cands = bestofn.score(q, texts, reward, guard)
    rewards = [classification.score_pairs(reward, [(q, t)])[0] for t in texts]
    toxicity = [classification.score_pairs(guard, [(q, t)])[0] for t in texts]
    assert [c.reward for c in cands] == pytest.approx(rewards, abs=1e-5)
    assert [c.toxicity for c in cands] == pytest.approx(toxicity, abs=1e-5)
    # the pick, on the scores as computed (one padded batch per scorer)
    threshold = sorted(c.toxicity for c in cands)[len(cands) // 2]
    monkeypatch.setattr(bestofn, "TOXICITY_THRESHOLD", threshold)
    best = bestofn.pick(cands)
    assert best is not None and best == _direct_choice(
        [c.reward for c in cands], [c.toxicity for c in cands], threshold)


def _run(engine, message, **kw):
    *_, last = chat_tab.respond(engine, message, progress=None, **kw)
    return last


def test_candidates_written_together_show_one_until_it_ends(engine, monkeypatch):
    """Pieces of three candidates come in turn; the first ends early. The
    page shows the first, never a mix, then moves to one still being written."""
    def chat(engine, key, messages, n, **kw):
        yield api.Started(key, "main", [1], 0, [Sampling()] * 3, "label", None, 1024, None)
        pieces = [(0, "A"), (1, "B"), (2, "C"), (0, "a"), (1, "b"), (2, "c")] + \
                 [(i, "x") for _ in range(3) for i in (1, 2)]
        for i, text in pieces:
            yield api.Piece(i, text, [], [])
        yield api.Answer([bestofn.Candidate("Aa"), bestofn.Candidate("Bbxxx"),
                          bestofn.Candidate("Ccxxx")], 1)
    monkeypatch.setattr(api, "chat", chat)
    shown = [s[-1]["content"] for s, _, _ in chat_tab.respond(engine, "Oi", n=3, progress=None)]
    assert shown[:2] == ["(candidate 1 of 3…)\n\nA", "(candidate 1 of 3…)\n\nAa"]
    assert shown[2].startswith("(candidate ") and shown[2].split("\n\n")[1] in ("Bbx", "Ccx", "Bbxx", "Ccxx")
    assert shown[-1] == "Bbxxx"


def test_tab_answers_with_the_best_candidate(engine, monkeypatch):
    monkeypatch.setattr(bestofn, "TOXICITY_THRESHOLD", float("-inf"))
    shown, _, table = _run(engine, "O que é uma lhama?", n=3, seed=7, max_new_tokens=12)
    assert len(table) == 3 and [row[4] for row in table].count("✓") == 1
    best = max(table, key=lambda row: row[2])
    assert best[4] == "✓" and shown[-1]["content"] == (best[1] or "…")


def test_tab_says_when_every_candidate_is_flagged(engine, monkeypatch):
    monkeypatch.setattr(bestofn, "TOXICITY_THRESHOLD", float("inf"))
    shown, _, table = _run(engine, "Oi", n=2, seed=1, max_new_tokens=8)
    assert "flagged as toxic" in shown[-1]["content"] and not any(r[4] for r in table)


def test_chat_works_without_the_scorers(tmp_path):
    """--strict with scorers that cannot be loaded: the answer is the first
    candidate, and the banner says what is missing."""
    aira_dir = standins.ensure("aira-2-124m", False, Path(os.environ["TTL_STANDIN_DIR"]))
    strict = Engine(Settings(strict=True, local_dirs={
        "aira-2-124m": str(aira_dir), "reward-pt": str(tmp_path), "toxiguard-pt": str(tmp_path)}))
    shown, banner, table = _run(strict, "Oi", n=2, seed=3, max_new_tokens=8)
    assert "RewardModelPT could not be loaded" in banner.value
    assert "ToxiGuardrailPT could not be loaded" in banner.value and banner.visible
    assert [r[4] for r in table] == ["✓", ""] and shown[-1]["content"] == (table[0][1] or "…")


def test_chat_endpoint_answers_with_text_and_history(client):
    answer = client.predict("O que é uma lhama?", seed=5, max_new_tokens=20, api_name="/chat")
    again = client.predict("O que é uma lhama?", seed=5, max_new_tokens=20, api_name="/chat")
    assert isinstance(answer, str) and answer.strip() and answer == again
    history = [{"role": "user", "content": "Oi"}, {"role": "assistant", "content": "Olá!"}]
    assert client.predict("E agora?", history, n=2, max_new_tokens=10, api_name="/chat").strip()


@pytest.mark.parametrize("kwargs", [{"n": 9}, {"n": 1.5}, {"history": "oops"},
                                    {"message": "  "}, {"temperature": -1}])
def test_chat_endpoint_rejects_bad_input(client, kwargs):
    with pytest.raises(AppError):
        client.predict(**{"message": "Oi", **kwargs}, api_name="/chat")


def _chatbot(*texts):
    """Messages as the Chatbot hands them to a handler."""
    return [{"role": ("user", "assistant")[i % 2], "content": [{"type": "text", "text": t}]}
            for i, t in enumerate(texts)]


def test_regenerate_answers_the_same_question_from_that_turn(engine):
    history = _chatbot("Oi", "Olá!", "O que é uma lhama?", "Um animal.")
    retry = chat_tab.gr.RetryData(None, {"index": 2, "value": "O que é uma lhama?"})
    *_, (shown, _, _) = chat_tab.regenerate(engine, history, False, 0.2, 30, 0.3, 1.2, 8, 4, 1,
                                            "aira-2-124m", retry, None)
    assert [m["content"] for m in shown[:3]] == ["Oi", "Olá!", "O que é uma lhama?"]
    assert len(shown) == 4 and shown[3]["role"] == "assistant"
    direct = _run(engine, "O que é uma lhama?", max_new_tokens=8, seed=4)[0][-1]
    assert shown[3] == direct   # same seed, same question: the same answer


def test_undo_drops_the_exchange_and_returns_the_question():
    history = _chatbot("Oi", "Olá!", "Tudo bem?", "Sim.")
    data = chat_tab.gr.UndoData(None, {"index": 2, "value": "Tudo bem?"})
    kept, question = chat_tab.undo(history, data)
    assert [m["content"] for m in kept] == ["Oi", "Olá!"] and question == "Tudo bem?"


def test_the_next_turn_computes_only_what_the_last_answer_did_not_leave(engine):
    """The next turn's prompt starts with the last one and its answer (as
    Aira's format writes them back): the decoder reads those from the row
    the answer left, and computes the new question alone."""
    aira = engine.load("aira-2-124m")
    messages = [{"role": "user", "content": "Olá, tudo bem? Fale sobre lhamas."}]
    first = list(api.chat(engine, "aira-2-124m", messages, max_new_tokens=20, seed=1))
    messages += [{"role": "assistant", "content": first[-1].candidates[0].text},
                 {"role": "user", "content": "E as alpacas?"}]
    second = list(api.chat(engine, "aira-2-124m", messages, max_new_tokens=20, seed=1))
    reused = decoder.decoder_for(aira).reused[-1]
    assert second[0].prompt[:len(first[0].prompt)] == first[0].prompt
    assert len(first[0].prompt) < reused < len(second[0].prompt)   # the answer's tokens too
