"""The app in headless Chromium, used as a person would."""

import pytest

pytestmark = pytest.mark.browser


def test_every_tab_opens(page):
    for tab in ("Instruction chat", "Classification", "Benchmarks", "Text generation"):
        page.get_by_role("tab", name=tab).click()
    page.get_by_role("tab", name="Benchmarks").click()
    page.wait_for_selector(".js-plotly-plot", timeout=20_000)


def test_generation_streams_into_the_page(page):
    page.get_by_role("button", name="Generate").click()
    out = page.locator("#gen-output textarea")
    page.wait_for_function(
        "() => document.querySelector('#gen-output textarea').value.length > 20", timeout=30_000)
    assert out.input_value().strip()
