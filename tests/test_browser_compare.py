"""The Compare tab in headless Chromium: columns stream side by side with
their tokens/s and "Why this token?"; the training timeline plots measured
and published points; a blind match is voted on and its names shown."""

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


@pytest.fixture
def tab(page):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#cmp-prompt textarea").wait_for(state="visible", timeout=10_000)
    return page


def test_three_columns_stream_side_by_side_then_why_this_token(tab):
    page = tab
    page.locator("#cmp-prompt textarea").fill("A lhama é um animal")
    page.get_by_role("button", name="Compare", exact=True).click()
    # Every default column's row in the figures has its own tokens/s.
    for i, name in enumerate(("ttl-160m@step100000", "ttl-160m@main", "ttl-460m@main"), 1):
        expect(page.locator("#cmp-figures")).to_contain_text(
            re.compile(rf"{name}\s+\d+\s+[\d.]+ s\s+[\d.]+"), timeout=60_000)
        expect(page.locator(f"#cmp-col-{i}")).to_contain_text(name)   # the column's name
        assert page.locator(f"#cmp-col-{i} textarea").input_value().strip()
    expect(page.locator("#cmp-col-4")).to_be_hidden()
    why = page.locator("#cmp-why-box")   # the generation tab has one too
    why.get_by_text("Why this token?").click()
    why.get_by_label("3", exact=True).check()
    why.get_by_role("button", name="Why these tokens?").click()
    page.wait_for_selector("#cmp-why .text", timeout=30_000)
    assert page.locator("#cmp-why .text").count() > 1


def test_the_timeline_plots_measured_and_published_points(tab):
    page = tab
    page.get_by_role("button", name="Measure every checkpoint").click()
    expect(page.locator("#cmp-timeline-summary")).to_contain_text("5 of 5 checkpoints",
                                                                 timeout=90_000)
    traces = page.wait_for_function("""() => {
        const plot = document.querySelector('#cmp-timeline .js-plotly-plot');
        return plot && plot.data && plot.data.length === 2 && plot.data[0].x.length === 5
            && plot.data.map(t => ({name: t.name, x: t.x, y: t.y}));
    }""", timeout=30_000).json_value()
    measured, published = traces
    assert "measured" in measured["name"] and "published" in published["name"]
    assert measured["x"][-1] == "main" and len(published["x"]) == 4
    assert published["y"] == [24.52, 20.58, 16.98, 16.41]   # as the authors published them
    assert measured["y"][0] > measured["y"][-1]             # the stand-in learned its page
    expect(page.locator("#cmp-timeline-table")).to_contain_text("step400000")


def test_a_blind_match_hides_the_names_until_the_vote(tab):
    page = tab
    page.locator("#cmp-prompt textarea").fill("A lhama é um animal")
    page.get_by_role("button", name="New blind match").click()
    match = page.locator("#cmp-match textarea, #cmp-match input").first
    expect(match).to_have_value(re.compile(r"^[0-9a-f]{32}$"), timeout=60_000)
    a, b = page.locator("#cmp-a textarea").input_value(), page.locator("#cmp-b textarea").input_value()
    assert a.strip() and b.strip()
    assert "@" not in page.locator("#cmp-reveal").inner_text()   # no name before the vote
    page.get_by_label("B is better").check()
    page.get_by_role("button", name="Vote", exact=True).click()
    expect(page.locator("#cmp-reveal")).to_contain_text(re.compile(r"A was \S+@\S+, B was \S+@\S+"),
                                                        timeout=30_000)
    expect(page.locator("#cmp-board")).to_contain_text("@")
    # A second vote on the same match is refused, with a message.
    page.get_by_role("button", name="Vote", exact=True).click()
    expect(page.get_by_text("already been voted").first).to_be_visible(timeout=10_000)
