"""The report page opened in a real headless browser (Debian's chromium): it renders, every image
decodes, and a screenshot is saved (under the test's tmp dir only)."""

from __future__ import annotations

import re

import pytest

from lowbit.report.browser import INSTALL_HINT, dump_dom, find_chromium, screenshot
from lowbit.report.sweep import run_sweep

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason=f"no chromium on PATH; install it: {INSTALL_HINT}")

# Run after load: writes each image's decoded size into the DOM that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = Array.from(document.images).map(
    (im) => `img ${im.complete} ${im.naturalWidth}x${im.naturalHeight}`).join("\\n");
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_chromium(tiny_llama, data_dir, fast_settings, tmp_path):
    out = tmp_path / "sweep"
    res = run_sweep("tiny-llama", ["int8-sym-channel", "int4-asym-g32"], out,
                    settings=fast_settings, progress=False, loaded=tiny_llama)
    page = res.report_html.read_text()
    assert "<script" not in page  # self-contained and static; the probe goes into a copy
    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))

    dom = dump_dom(probe)
    sizes = re.findall(r"img (true|false) (\d+)x(\d+)", dom)
    assert len(sizes) == len(res.plots) >= 3
    for complete, w, h in sizes:  # decoded PNGs: a broken data URI gives naturalWidth 0
        assert complete == "true" and int(w) > 100 and int(h) > 100
    assert "float baseline (fp32)" in dom and "int4-asym-g32" in dom

    png = screenshot(res.report_html, tmp_path / "report_screenshot.png", width=1200,
                     height=2000)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 2000)
    # a blank page compresses to a few KB; text, a table and plots take far more
    assert len(data) > 30_000
