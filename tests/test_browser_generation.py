"""The generation tab in headless Chromium: text streams in, Stop stops it."""

import re

import pytest

pytestmark = pytest.mark.browser


def test_prompt_streams_in_and_stop_stops_it(page):
    page.get_by_label("Prompt").fill("A lhama é um animal")
    page.get_by_label("Max new tokens").first.fill("1000")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "() => document.querySelector('#gen-output textarea').value.length > 10", timeout=30_000)
    page.get_by_role("button", name="Stop").click()
    page.wait_for_timeout(1500)
    out = page.locator("#gen-output textarea")
    stopped = out.input_value()
    page.wait_for_timeout(1500)
    assert stopped.strip() and out.input_value() == stopped   # nothing more arrives
    new = int(re.search(r"(\d+) new tokens", page.locator("#gen-figures").inner_text()).group(1))
    assert 0 < new < 1000                                       # stopped before the end


def test_two_completions_side_by_side_then_why_and_perplexity(page):
    page.get_by_label("Prompt").fill("A lhama é um animal")
    page.get_by_label("Max new tokens").first.fill("30")
    page.get_by_label("Completions side by side").first.fill("2")
    page.get_by_label("Completions side by side").first.press("Enter")
    page.locator("#gen-output-2 textarea").wait_for(state="visible", timeout=10_000)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "() => (document.querySelector('#gen-output-2 textarea') || {value: ''}).value.length > 5",
        timeout=30_000)
    page.wait_for_selector("text=/\\d+ new tokens/", timeout=30_000)
    page.get_by_text("Why this token?").click()
    page.get_by_role("button", name="Why these tokens?").click()
    page.wait_for_selector("#gen-why .text", timeout=30_000)
    assert page.locator("#gen-why .text").count() > 1
    page.get_by_text("Perplexity of a text").click()
    page.get_by_label("Text to score").fill("A lhama é um animal dos Andes.")
    page.get_by_role("button", name="Perplexity", exact=True).click()
    page.wait_for_selector("text=/Perplexity \\d/", timeout=30_000)
