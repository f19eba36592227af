"""The Benchmarks tab in headless Chromium: the plots are drawn, the table
selector redraws them, every table fits a 1280 px screen, and 'Measure
here' reports a measurement."""

import pytest
from playwright.sync_api import expect

from ui import benchmarks

pytestmark = pytest.mark.browser


def test_benchmark_plots_are_drawn_and_follow_the_selectors(page):
    page.get_by_role("tab", name="Benchmarks").click()
    for plot in ("bench-perplexity", "bench-checkpoints", "bench-bars", "bench-heatmap"):
        page.wait_for_selector(f"#{plot} .js-plotly-plot .main-svg", timeout=30_000)
    # Plotly draws one bar path per published value: 11 models x 5 metrics.
    assert page.locator("#bench-bars .bars path").count() == 55
    page.hover("#bench-perplexity .js-plotly-plot")   # the toolbar shows on hover
    assert page.get_by_role("button", name="Download plot as a PNG").first.is_visible()

    page.get_by_role("combobox", name="Table", exact=True).click()
    page.get_by_role("option", name="Fine-tuning comparisons (accuracy)").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#bench-bars .bars path').length === 24", timeout=20_000)
    page.get_by_label("Worst first").check()
    page.wait_for_function(
        "() => document.querySelector('#bench-bars .legendtext')?.textContent === 'TTL-160m'",
        timeout=20_000)


# Each header cell of a table: its name and its left and right edges on the
# page, as shown, or after the table's own box is scrolled as far right as
# it goes.
HEADERS = """([id, scroll]) => {
  const root = document.getElementById(id);
  for (const el of root.querySelectorAll("*"))
    if (scroll && el.scrollWidth > el.clientWidth + 1) el.scrollLeft = el.scrollWidth;
  return [...root.querySelectorAll("th[role=columnheader]")].map(th => {
    const r = th.getBoundingClientRect();
    return [th.title, r.left, r.right];
  });
}"""
WIDEST_THAT_FITS = 10   # columns; the LLM-Notebooks tables have 14 and 16


def headers(page, elem_id: str, scroll: bool = False) -> list:
    return page.evaluate(HEADERS, [elem_id, scroll])


def in_view(page, elem_id: str, scroll: bool = False) -> list[str]:
    """The names of the table's columns whose header shows whole in its box."""
    box = page.locator(f"#{elem_id}").bounding_box()
    return [name for name, left, right in headers(page, elem_id, scroll)
            if box["x"] <= left and right <= box["x"] + box["width"] + 1]


def test_published_tables_fit_a_1280px_screen_or_scroll_in_their_own_box(page):
    width = page.viewport_size["width"]
    page.get_by_role("tab", name="Benchmarks").click()
    columns = list(benchmarks.read("ttl-460m-perplexity").columns)
    assert in_view(page, "bench-training") == columns
    for title, name in benchmarks.COMPARISONS:
        page.get_by_role("combobox", name="Table", exact=True).click()
        page.get_by_role("option", name=title).click()
        columns = list(benchmarks.as_published(name).columns)
        # Every header the new table's own: two tables can end with the same column.
        page.wait_for_function(
            "([id, names]) => JSON.stringify([...document.querySelectorAll(`#${id} th[role=columnheader]`)]"
            ".map(t => t.title)) === JSON.stringify(names)",
            arg=["bench-exact", columns], timeout=20_000)
        box = page.locator("#bench-exact").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, name
        if len(columns) <= WIDEST_THAT_FITS:
            assert in_view(page, "bench-exact") == columns, name
        else:   # its last column is reached by scrolling the table, not the page
            assert columns[-1] in in_view(page, "bench-exact", scroll=True), name


def test_measure_here_shows_a_measurement(page):
    page.get_by_role("tab", name="Benchmarks").click()
    # Before a measurement: what to do, and tables with their headers.
    assert "Nothing measured yet" in page.locator("#bench-measured").inner_text()
    assert [h[0] for h in headers(page, "bench-speeds")] == benchmarks.SPEED_COLUMNS
    assert [h[0] for h in headers(page, "bench-surprisal")] == benchmarks.SURPRISAL_COLUMNS
    page.get_by_role("button", name="Measure here").click()
    page.wait_for_function(
        "() => (document.querySelector('#bench-measured')?.textContent || '').includes('perplexity')",
        timeout=60_000)
    assert "stand-in" in page.locator("#bench-measured").inner_text()
    expect(page.locator("#bench-speeds")).to_contain_text("TeenyTinyLlama-160m")
    assert in_view(page, "bench-speeds") == benchmarks.SPEED_COLUMNS
