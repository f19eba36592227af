"""The page on a phone (390×844) and on a projector (1280×800), with no
internet: everything it needs comes from the app itself."""

import time
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

TABS = ("Text generation", "Instruction chat", "Compare", "Classification", "Fine-tune",
        "Benchmarks")
SCREENS = {"phone": (390, 844), "projector": (1280, 800)}

# Visible elements whose right edge is past the viewport, skipping those
# inside a box that scrolls or clips (a wide table scrolls in its own box).
PAST_RIGHT_EDGE = """() => {
  const width = document.documentElement.clientWidth, past = [];
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height || r.right <= width + 1) continue;
    let up = el.parentElement;
    while (up && getComputedStyle(up).overflowX === "visible") up = up.parentElement;
    if (!up || up === document.documentElement || up === document.body)
      past.push(`${el.tagName}.${el.className} ends at ${Math.round(r.right)}px`);
  }
  return past;
}"""


# Gradio's event stream: open while the page's events run. Gradio's client
# sometimes opens a second one for the same events, which the first has
# already read, and leaves it open for the page's life, so "network idle"
# may never come; the settled page is judged without them.
EVENT_STREAM = "/gradio_api/queue/data"


class Traffic:
    """Every URL a page asked for, and a wait until it has settled: no
    request but event streams in flight for `quiet_s`."""

    def __init__(self, page):
        self.page, self.asked, self.open, self.last = page, [], set(), time.monotonic()
        page.on("request", self.started)
        page.on("requestfinished", self.ended)
        page.on("requestfailed", self.ended)

    def started(self, request):
        self.asked.append(request.url)
        if EVENT_STREAM not in request.url:
            self.open.add(request)
            self.last = time.monotonic()

    def ended(self, request):
        self.open.discard(request)
        self.last = time.monotonic()

    def settle(self, quiet_s=0.5, timeout_s=30.0):
        deadline = time.monotonic() + timeout_s
        while self.open or time.monotonic() - self.last < quiet_s:
            assert time.monotonic() < deadline, f"still loading: {[r.url for r in self.open]}"
            self.page.wait_for_timeout(50)   # Playwright delivers the page's events while waiting


def open_page(browser, url: str, screen: str, errors: list[str]):
    """A fresh page at that screen size, loaded and settled (a page waiting
    on anything outside the app never settles), with its traffic; page
    errors go to `errors`."""
    width, height = SCREENS[screen]
    ctx = browser.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    traffic = Traffic(page)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(url, wait_until="load", timeout=30_000)
    traffic.settle()
    return ctx, page, traffic


@pytest.fixture(params=list(SCREENS))
def screen(request, browser, app_url):
    errors: list[str] = []
    ctx, page, traffic = open_page(browser, app_url, request.param, errors)
    yield page, traffic
    ctx.close()
    assert not errors, "\n".join(errors)


def test_no_request_leaves_the_app(screen, app_url):
    page, traffic = screen
    for tab in TABS:   # each tab's own content (plots, tables) too
        page.get_by_role("tab", name=tab).click()
        traffic.settle()
    app = urlsplit(app_url)
    elsewhere = [u for u in traffic.asked if urlsplit(u).scheme not in ("data", "blob")
                 and urlsplit(u)[:2] != app[:2]]
    assert not elsewhere, elsewhere
    assert any("/static/fonts/" in u for u in traffic.asked)   # the theme's fonts, from the app


def test_every_tab_button_is_on_screen_and_opens_its_tab(screen):
    page, _ = screen
    width = page.viewport_size["width"]
    for tab in TABS:
        button = page.get_by_role("tab", name=tab)
        expect(button, f"{tab} is not on screen (hidden in a menu?)").to_be_visible()
        box = button.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, f"{tab} is cut at the edge"
        button.click()
        expect(button).to_have_attribute("aria-selected", "true")


def test_first_tab_fits_the_width(screen):
    page, _ = screen
    assert page.evaluate(PAST_RIGHT_EDGE) == []
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")


def test_standin_banner_is_one_short_line_with_details_on_a_click(screen):
    page, _ = screen
    banner = page.locator("#standin-banner")
    expect(banner).to_have_text("Serving stand-ins, not the real models.", use_inner_text=True)
    assert banner.bounding_box()["height"] < 60
    details = banner.get_by_text("tiny weights")
    expect(details).to_be_hidden()
    banner.locator("summary").click()
    expect(details).to_be_visible()


def test_the_llama_is_hidden_where_it_would_be_an_empty_box(screen):
    page, _ = screen
    no_emoji = page.evaluate("document.documentElement.classList.contains('no-emoji')")
    llama = expect(page.locator("#title .emoji"))
    if no_emoji:
        llama.to_be_hidden()
    else:
        llama.to_be_visible()
    expect(page.get_by_role("heading", name="TeenyTinyLlama Playground")).to_be_visible()


def font_px(page, selector: str) -> float:
    # A settled page may not have drawn its tabs yet on a busy machine.
    page.wait_for_selector(selector, state="attached", timeout=30_000)
    return page.evaluate(f"parseFloat(getComputedStyle(document.querySelector({selector!r})).fontSize)")


def test_present_mode_enlarges_the_type_and_hides_the_chrome(browser, app_url):
    errors: list[str] = []
    ctx, page, _ = open_page(browser, app_url, "projector", errors)
    expect(page.locator("footer")).to_be_visible()
    plain = font_px(page, "#gen-output textarea")
    ctx.close()

    ctx, page, _ = open_page(browser, app_url + "?present=1", "projector", errors)
    assert font_px(page, "#gen-output textarea") >= 1.3 * plain
    expect(page.locator("footer")).to_be_hidden()
    expect(page.locator("#subtitle")).to_be_hidden()
    expect(page.locator("#standin-banner")).to_be_visible()   # the audience must know
    # The header's button turns it off, and the address follows.
    page.locator("#present-toggle").click()
    expect(page.locator("footer")).to_be_visible()
    assert font_px(page, "#gen-output textarea") == plain
    assert "present" not in page.url
    ctx.close()
    assert not errors, "\n".join(errors)
