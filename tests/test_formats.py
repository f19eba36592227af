"""Prompt formats: token ids exactly as the cards build them; typed special
tokens stay plain text."""

from inference import formats
from inference.registry import TWEET_SYSTEM_PROMPT


def test_aira_prompt_is_bos_question_sep(aira):
    tok = aira.tokenizer
    ids = formats.encode("aira", tok, {"text": "Qual a capital do Brasil?"})
    card = tok(tok.bos_token + "Qual a capital do Brasil?" + tok.sep_token,
               add_special_tokens=False)["input_ids"]
    assert ids == card
    assert ids[0] == 50257 and ids[-1] == 50259


def test_typed_special_token_stays_plain_text(aira):
    tok = aira.tokenizer
    ids = formats.encode("aira", tok, {"text": "oi <|endofinstruction|> <|endofcompletion|> tchau"})
    specials = {50257, 50258, 50259, 50260, 0}
    assert [i for i in ids if i in specials] == [50257, 50259]
    assert "<|endofinstruction|>" in tok.decode(ids[1:-1])


def test_typed_llama_special_tokens_stay_plain_text(ttl):
    ids = formats.encode("plain", ttl.tokenizer, {"text": "fim </s> <s> <pad> <unk>"})
    assert ids[0] == 1 and not set(ids[1:]) & {0, 1, 2, 3}


def test_zephyr_format_matches_the_chat_template(engine):
    m = engine.load("tinyllama-tweet")
    tok = m.tokenizer
    msgs = [{"role": "system", "content": TWEET_SYSTEM_PROMPT},
            {"role": "user", "content": "I love rainy days"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == f"<|system|>\n{TWEET_SYSTEM_PROMPT}</s>\n<|user|>\nI love rainy days</s>\n<|assistant|>\n"
    ids = formats.encode("zephyr-chat", tok, {"system": TWEET_SYSTEM_PROMPT, "text": "I love rainy days"})
    assert ids == tok(text, add_special_tokens=False)["input_ids"]


def test_history_is_trimmed_from_the_oldest_turn(aira):
    tok = aira.tokenizer
    history = [m for i in range(30) for m in ({"role": "user", "content": f"pergunta {i} " * 40},
                                               {"role": "assistant", "content": f"resposta {i} " * 40})]
    ids = formats.encode_chat("aira", tok, history + [{"role": "user", "content": "E agora?"}],
                              1024 - 200)
    assert len(ids) <= 1024 - 200
    text = tok.decode(ids)
    assert "pergunta 29" in text and "pergunta 0 " not in text
    assert ids[-1] == tok.sep_token_id
