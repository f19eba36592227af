"""The app in headless Chromium, used as a person would."""

import pytest

pytestmark = pytest.mark.browser


def test_every_tab_opens(page):
    # each tab, and something only that tab has, visible once it is open
    for tab, what in (("Instruction chat", "#chat-msg textarea"),
                      ("Classification", "button:text-is('Classify')"),
                      ("Benchmarks", ".js-plotly-plot"),
                      ("Text generation", "#gen-output textarea")):
        page.get_by_role("tab", name=tab).click()
        page.locator(what).first.wait_for(state="visible", timeout=20_000)


def test_generation_streams_into_the_page(page):
    page.get_by_role("button", name="Generate").click()
    out = page.locator("#gen-output textarea")
    page.wait_for_function(
        "() => document.querySelector('#gen-output textarea').value.length > 20", timeout=30_000)
    assert out.input_value().strip()
