"""The Fine-tune tab in headless Chromium: a toy table is trained, a longer
run is stopped (what it trained is kept), and the Classification tab then
classifies with the new models."""

import pytest
from playwright.sync_api import expect

from toydata import toy_tsv

pytestmark = pytest.mark.browser


def set_number(page, name: str, value) -> None:
    box = page.get_by_label(name, exact=True)
    box.fill(str(value))
    box.press("Enter")


def train(page, name: str, epochs: int) -> None:
    page.get_by_label("Name (served as custom/<name>)").fill(name)
    set_number(page, "number input for Epochs", epochs)
    set_number(page, "Learning rate", 0.005)
    set_number(page, "number input for Maximum length (tokens)", 64)
    page.get_by_role("button", name="Train").click()


def test_train_stop_train_again_and_classify_with_the_new_model(page, tmp_path):
    path = tmp_path / "reviews.tsv"
    path.write_text(toy_tsv(2000), encoding="utf-8")   # 100 steps an epoch
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#finetune-file input[type=file]").set_input_files(str(path))
    expect(page.get_by_text("2,000 rows, 2 labels")).to_be_visible(timeout=30_000)

    # A long run, stopped: what it trained is saved and scored.
    train(page, "browser-stopped", 20)
    expect(page.get_by_text("Training: step")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_text("Stopped at step")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("custom/browser-stopped is saved")).to_be_visible()
    scores = page.get_by_role("grid", name="Held-out evaluation")
    expect(scores).to_contain_text("browser-stopped")

    # Another run after it, to the end.
    train(page, "browser-toy", 1)
    expect(page.get_by_text("custom/browser-toy is saved")).to_be_visible(timeout=120_000)
    expect(scores).to_contain_text("Acc ↑")
    expect(page.get_by_role("button", name="Download custom/browser-toy (zip)")).to_be_visible()

    # The Classification tab lists both without a restart and classifies.
    page.get_by_role("tab", name="Classification").click()
    page.get_by_role("combobox", name="Classifier").click()
    expect(page.get_by_role("option", name="browser-stopped (fine-tuned TeenyTinyLlama-160m)")
           ).to_be_visible()
    page.get_by_role("option", name="browser-toy (fine-tuned TeenyTinyLlama-160m)").click()
    page.get_by_label("Text", exact=True).fill("O show foi incrível, de verdade.")
    page.get_by_role("button", name="Classify", exact=True).click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('h2, .output-class')]"
        ".some(e => e.textContent.trim() === 'bom')", timeout=30_000)
