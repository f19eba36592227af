"""The chat tab in headless Chromium: ask, watch the answer stream in,
regenerate it, clear the chat."""

import time

import pytest

from inference import decoder

pytestmark = pytest.mark.browser

BOT = "#chat-bot [data-testid='bot']"
QUESTION = "Quem foi Santos Dumont?"


@pytest.fixture
def slow_aira(monkeypatch):
    """Aira's stand-in slowed to ~20 tokens/s: its answers are a line or
    two, over before a page can see one grow at full speed."""
    forward = decoder.FORWARDS["gpt2"]

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return forward(*args, **kwargs)
    monkeypatch.setitem(decoder.FORWARDS, "gpt2", slow)


def bot_text(page) -> str:
    return page.locator(BOT).last.inner_text()


def test_chat_streams_regenerates_and_clears(page, slow_aira):
    page.get_by_role("tab", name="Instruction chat").click()
    page.locator("#chat-msg textarea").fill(QUESTION)
    page.get_by_role("button", name="Send", exact=True).click()

    # Streaming: the answer is seen growing before it is done.
    page.wait_for_function(f"() => document.querySelector(\"{BOT}\")?.innerText.length > 0",
                           timeout=30_000)
    seen = [bot_text(page)]
    page.wait_for_function(
        f"(n) => (document.querySelector(\"{BOT}\")?.innerText.length || 0) > n",
        arg=len(seen[0]), timeout=30_000)
    seen.append(bot_text(page))
    assert seen[1].startswith(seen[0][:5]) and len(seen[1]) > len(seen[0])
    page.locator("#chat-bot [data-testid='user']").filter(has_text=QUESTION).wait_for()
    page.get_by_role("button", name="Retry").last.wait_for(timeout=60_000)   # shown once done
    first = bot_text(page)

    # Regenerate: still one question and one answer, answered again.
    page.get_by_role("button", name="Retry").last.click()
    page.wait_for_function(
        f"(old) => {{ const b = document.querySelectorAll(\"{BOT}\");"
        f" return b.length === 1 && b[0].innerText !== old; }}", arg=first, timeout=60_000)
    assert page.locator("#chat-bot [data-testid='user']").count() == 1

    page.locator("#chat-clear").click()
    page.wait_for_function(f"() => document.querySelectorAll(\"{BOT}\").length === 0",
                           timeout=10_000)
    assert page.locator("#chat-bot [data-testid='user']").count() == 0


def test_markup_in_the_chat_is_shown_as_text_and_fetches_nothing(page):
    fetched = []
    page.on("request", lambda r: "127.0.0.9" in r.url and fetched.append(r.url))
    page.get_by_role("tab", name="Instruction chat").click()
    typed = 'Oi <img src="http://127.0.0.9:9/x.png"> <form><input value="x"></form> ![a](http://127.0.0.9:9/a.png)'
    page.locator("#chat-msg textarea").fill(typed)
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => document.querySelectorAll('#chat-bot .message').length >= 2",
                           timeout=60_000)
    bot = page.locator("#chat-bot")
    assert bot.locator("img").count() == 0 and bot.locator("form, input").count() == 0
    assert typed in bot.locator(".message").first.inner_text()   # shown as typed
    assert not fetched
