"""Screenshots of every tab, light and dark, and of the first screen on a
phone (390x844) and on a projector (1280x800, presentation mode), for README
and talks.

    python scripts/screenshots.py [--out docs/screenshots]

Starts the app on stand-ins (TTL_STANDIN_DIR reuses built ones) on a free
loopback port, uses each tab once as a person would, and saves PNGs. Needs
Debian's Chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The model the Fine-tune tab's shot trains is not kept.
os.environ.setdefault("TTL_DATA_DIR", tempfile.mkdtemp(prefix="ttl-screenshots-"))

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# tab title -> (file stem, button to press, selector that shows it worked)
TABS = {
    "Text generation": ("generation", "Generate", "#gen-output textarea"),
    "Instruction chat": ("chat", None, None),
    "Compare": ("compare", None, None),
    "Classification": ("classification", "Classify", None),
    "Fine-tune": ("finetune", None, None),
    "Benchmarks": ("benchmarks", None, ".js-plotly-plot"),
}


def use_tab(page, title: str) -> None:
    stem, button, ready = TABS[title]
    page.get_by_role("tab", name=title).click()
    page.wait_for_timeout(500)
    if title == "Instruction chat":
        box = page.get_by_placeholder("Pergunte algo em português…")
        box.fill("Você pode me explicar o que é Aprendizagem de Máquina?")
        box.press("Enter")
        page.wait_for_selector("#chat-bot [data-testid='bot']", timeout=180_000)
        page.wait_for_timeout(3000)
    elif title == "Compare":
        use_compare(page)
    elif title == "Fine-tune":
        train_toy_model(page)
    elif button:
        page.get_by_role("button", name=button, exact=True).first.click()
        page.wait_for_timeout(4000)
    if ready:
        page.wait_for_selector(ready, timeout=60_000)


def use_compare(page) -> None:
    """Three columns, the 160m timeline, and a blind match voted on."""
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_selector("#cmp-figures:has-text('seed')", timeout=120_000)
    page.wait_for_function("() => !document.querySelector('#cmp-figures').innerText"
                           ".includes('waiting')", timeout=120_000)
    page.get_by_role("button", name="Measure every checkpoint").click()
    page.wait_for_selector("#cmp-timeline-summary:has-text('5 of 5')", timeout=180_000)
    page.get_by_role("button", name="New blind match").click()
    page.wait_for_function("() => /^[0-9a-f]{32}$/.test(document.querySelector("
                           "'#cmp-match textarea, #cmp-match input').value)", timeout=120_000)
    page.get_by_role("button", name="Vote", exact=True).click()
    page.wait_for_selector("#cmp-reveal:has-text('A was')", timeout=60_000)


def train_toy_model(page) -> None:
    """The tab after a short run on the tests' toy reviews."""
    from tests.toydata import toy_tsv
    path = Path(tempfile.mkdtemp()) / "reviews.tsv"
    path.write_text(toy_tsv(), encoding="utf-8")
    page.locator("#finetune-file input[type=file]").set_input_files(str(path))
    page.get_by_text("240 rows, 2 labels").wait_for(timeout=30_000)
    page.get_by_label("Name (served as custom/<name>)").fill("reviews")
    for label, value in (("number input for Epochs", 10), ("Learning rate", 0.005),
                         ("number input for Maximum length (tokens)", 64)):
        page.get_by_label(label, exact=True).fill(str(value))
        page.get_by_label(label, exact=True).press("Enter")
    page.get_by_label("Replace a model of the same name").check()
    page.get_by_role("button", name="Train").click()
    page.get_by_text("custom/reviews is saved").wait_for(timeout=180_000)
    page.wait_for_timeout(1000)


# file stem -> (viewport, query, tab, what to scroll to): one screen, as it is seen
SCREENS = {
    "phone-generation": ((390, 844), "", "Text generation", None),
    "phone-chat": ((390, 844), "", "Instruction chat", None),
    "projector-generation": ((1280, 800), "?present=1", "Text generation", None),
    "projector-benchmarks": ((1280, 800), "?present=1", "Benchmarks", ".js-plotly-plot"),
}
SCREENS["projector-compare"] = ((1280, 800), "?present=1", "Compare", "#cmp-timeline")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--tabs", nargs="*", choices=list(TABS), help="only these tabs' shots")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import app
    from inference.engine import Engine
    from inference.settings import Settings
    from playwright.sync_api import sync_playwright
    from tests.conftest import free_port

    engine = Engine(Settings.from_env(standin=True))
    demo = app.build(engine)
    port = free_port()
    app.launch(demo, engine, server_name="127.0.0.1", server_port=port,
               prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for theme in ("light", "dark"):
                page = browser.new_page(viewport={"width": 1360, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/?__theme={theme}")
                page.wait_for_selector("button:has-text('Generate')", timeout=60_000)
                for title, (stem, _, _) in TABS.items():
                    if args.tabs and title not in args.tabs:
                        continue
                    use_tab(page, title)
                    path = args.out / f"{stem}-{theme}.png"
                    page.screenshot(path=str(path), full_page=True)
                    print(path)
                page.close()
            for stem, ((width, height), query, title, where) in SCREENS.items():
                if args.tabs and title not in args.tabs:
                    continue
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"http://127.0.0.1:{port}/{query}")
                page.wait_for_selector("button:has-text('Generate')", timeout=60_000)
                use_tab(page, title)
                if where:
                    page.locator(where).first.evaluate("e => e.scrollIntoView({block: 'center'})")
                else:
                    page.evaluate("window.scrollTo(0, 0)")
                path = args.out / f"{stem}.png"
                page.screenshot(path=str(path))
                print(path)
                page.close()
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main()
