"""The classification tab in headless Chromium: one sentence, then a small CSV."""

import pytest

pytestmark = pytest.mark.browser


def test_classify_a_sentence_and_a_small_csv(page, tmp_path):
    page.get_by_role("tab", name="Classification").click()
    page.get_by_role("button", name="Classify", exact=True).click()
    # gr.Label shows the winning label as its heading.
    page.wait_for_function(
        "() => [...document.querySelectorAll('h2, .output-class')]"
        ".some(e => /NEGATIVE|POSITIVE/.test(e.textContent))", timeout=30_000)

    csv = tmp_path / "reviews.csv"
    csv.write_text("text\nAdorei o filme.\n\"\"\n\"Péssimo, não recomendo.\"\n", encoding="utf-8")
    page.get_by_text("Batch: a CSV or one text per line").click()
    page.locator("input[type=file]").first.set_input_files(str(csv))
    page.get_by_role("button", name="Classify all").click()
    page.wait_for_function(
        "() => document.body.innerText.includes('empty text')", timeout=30_000)
    body = page.locator("body").inner_text()
    assert "Adorei o filme." in body and "Péssimo, não recomendo." in body
    page.wait_for_selector("a[download]", timeout=10_000)
