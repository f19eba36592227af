"""The Benchmarks tab in headless Chromium: the plots are drawn, the table
selector redraws them, and 'Measure here' reports a measurement."""

import pytest

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


def test_measure_here_shows_a_measurement(page):
    page.get_by_role("tab", name="Benchmarks").click()
    page.get_by_role("button", name="Measure here").click()
    page.wait_for_function(
        "() => (document.querySelector('#bench-measured')?.textContent || '').includes('perplexity')",
        timeout=60_000)
    assert "stand-in" in page.locator("#bench-measured").inner_text()
