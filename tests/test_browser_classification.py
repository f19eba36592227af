"""The classification tab in headless Chromium: one sentence, then a small
CSV, whose results go when another classifier is chosen."""

import time

import pytest
from playwright.sync_api import expect

from conftest import wait_until
from inference import classification
from ui import classification as tab

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

    # Another classifier: the IMDB results, their chart and their download go.
    page.get_by_role("combobox", name="Classifier").click()
    page.get_by_role("option", name="TeenyTinyLlama-160m-AgNews (news topic)").click()
    results = page.get_by_role("grid", name="Results")
    expect(results).not_to_contain_text("Adorei o filme.")
    expect(page.locator("#class-download")).to_be_hidden()
    expect(results.locator("th[role=columnheader]").nth(1)).to_have_attribute("title", "title")
    assert "POSITIVE" not in results.inner_text()


def test_choosing_another_classifier_stops_the_running_batch(page, slow_chunks):
    chunks = slow_chunks
    page.get_by_role("tab", name="Classification").click()
    page.get_by_text("Batch: a CSV or one text per line").click()
    page.get_by_label("Or paste one text per line").fill(
        "\n".join(f"Um filme número {i}." for i in range(1000)))
    page.get_by_role("button", name="Classify all").click()
    assert wait_until(lambda: len(chunks) >= 2, 30)
    page.get_by_role("combobox", name="Classifier").click()
    page.get_by_role("option", name="TeenyTinyLlama-160m-AgNews (news topic)").click()
    time.sleep(tab.ABANDONED_S + 1.0)   # the chunk running then may finish
    after = len(chunks)
    time.sleep(1.0)
    assert len(chunks) == after < 1000 // classification.BATCH_CHUNK
    results = page.get_by_role("grid", name="Results")
    expect(results).not_to_contain_text("Um filme número")
    expect(results.locator("th[role=columnheader]").nth(1)).to_have_attribute("title", "title")
