"""The explain page, made by the CLI on a real folder, opened in headless Chromium: every image
decodes."""

from __future__ import annotations

import re

import pytest

from lowbit.cli import main
from lowbit.report.browser import INSTALL_HINT, dump_dom, find_chromium
from tests.report.test_html_browser import PROBE

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason=f"no chromium on PATH; install it: {INSTALL_HINT}")


def test_explain_page_renders_in_chromium(tiny_hf_dir, tmp_path, capsys):
    out = tmp_path / "explain"
    rc = main(["explain", str(tiny_hf_dir), "layers.0.mlp.down_proj", "--scheme", "int4-sym-g32",
               "--scheme", "nf4-g16", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "model.layers.0.mlp.down_proj.weight" in printed
    page = (out / "explain.html").read_text()
    assert "<script" not in page and 'src="data:image/png;base64,' in page
    n_images = page.count("<img ")
    pngs = sorted(out.glob("*.png"))
    assert n_images == len(pngs) >= 8  # 2 formats, 2 grids, 2 heatmaps, errors, comparison
    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = dump_dom(probe)
    sizes = re.findall(r"img (true|false) (\d+)x(\d+)", dom)
    assert len(sizes) == n_images
    for complete, w, h in sizes:  # a broken data URI decodes to naturalWidth 0
        assert complete == "true" and int(w) > 100 and int(h) > 100
    assert "Bit for bit" in dom and "nf4-g16" in dom
