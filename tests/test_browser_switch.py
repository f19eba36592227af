"""Switching models in the page, as a presenter does between slides."""

import pytest

pytestmark = pytest.mark.browser


def choose(page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_switch_to_460m_lists_its_checkpoints_and_generates(page):
    choose(page, "Model", "TeenyTinyLlama-460m")
    page.get_by_label("Checkpoint (training step)").first.click()
    page.get_by_role("option", name="step1200000", exact=True).wait_for(timeout=10_000)
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "() => document.querySelector('#gen-figures')?.innerText.includes('new tokens')",
        timeout=120_000)
    banner = page.locator(".notice").filter(has_text="TeenyTinyLlama-460m").first
    assert banner.is_visible()


def test_switch_classifier_relabels_the_inputs(page):
    page.get_by_role("tab", name="Classification").click()
    choose(page, "Classifier", "TeenyTinyLlama-160m-Assin2 (entailment)")
    page.get_by_label("Premise").first.wait_for(state="visible", timeout=10_000)
    page.get_by_label("Hypothesis").first.wait_for(state="visible", timeout=10_000)
    assert page.get_by_label("Text", exact=True).count() == 0 or \
        not page.get_by_label("Text", exact=True).first.is_visible()   # the single-text label is gone
