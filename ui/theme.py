"""The app's look: Gradio's Soft theme in the colours of the llama cards,
and the page's presentation mode."""

import gradio as gr

from .common import ASSETS

# Only fonts the app serves itself (Gradio ships Montserrat and IBM Plex Mono,
# both under the SIL Open Font License, at /static/fonts), then the system's:
# the page must load whole on a machine with no internet, as at a talk.
FONT = (gr.themes.LocalFont("Montserrat", weights=(400, 700)),
        "ui-sans-serif", "system-ui", "sans-serif")
FONT_MONO = (gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace")

THEME = gr.themes.Soft(primary_hue="amber", secondary_hue="emerald", neutral_hue="stone",
                       font=FONT, font_mono=FONT_MONO)
CSS = (ASSETS / "style.css").read_text(encoding="utf-8")

# Run in <head>, before the page is drawn, so that neither switch flickers.
# `present` (from ?present=1, or the header's button): larger type, less
# chrome (style.css). `no-emoji`: the header's llama is hidden where no font
# draws it in colour, as on a machine with no emoji font, where it would be
# an empty box.
HEAD = """<script>
if (new URLSearchParams(location.search).get("present") === "1")
  document.documentElement.classList.add("present");
(() => {
  const c = document.createElement("canvas").getContext("2d", {willReadFrequently: true});
  c.canvas.width = c.canvas.height = 32;
  c.font = "28px sans-serif";
  c.fillText("\\u{1F999}", 0, 28);
  const px = c.getImageData(0, 0, 32, 32).data;
  for (let i = 0; i < px.length; i += 4)
    if (px[i] !== px[i + 1] || px[i + 1] !== px[i + 2]) return;
  document.documentElement.classList.add("no-emoji");
})();
</script>"""

# The header's button: presentation mode on and off, kept in the address so
# that a reload keeps it.
TOGGLE_PRESENT = """() => {
  const on = document.documentElement.classList.toggle("present");
  const url = new URL(location.href);
  if (on) url.searchParams.set("present", "1"); else url.searchParams.delete("present");
  history.replaceState(null, "", url);
}"""
