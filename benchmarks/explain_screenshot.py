"""The explain page for a real Gemma-3-270M tensor, as headless Chromium renders it.

Runs ``lowbit explain gemma-3-270m model.layers.0.mlp.down_proj --scheme int4-sym-g32
--scheme int4-asym-g128`` (the command a user runs) into a scratch folder, then saves a
screenshot of the page and the printed summary:

    .venv/bin/python benchmarks/explain_screenshot.py
    # -> benchmarks/results/explain_screenshot.png, benchmarks/results/explain.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

from lowbit.cli import main as lowbit_main
from lowbit.report.browser import screenshot
from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results"
MODEL, TENSOR = "gemma-3-270m", "model.layers.0.mlp.down_proj"
SCHEMES = ["int4-sym-g32", "int4-asym-g128"]


def run(out: Path, width: int, height: int) -> str:
    """Explain the tensor into ``out``, screenshot the page; returns what the command printed."""
    argv = ["explain", MODEL, TENSOR, "-o", str(out)]
    for s in SCHEMES:
        argv += ["--scheme", s]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = lowbit_main(argv)
    if rc != 0:
        raise SystemExit(f"lowbit {' '.join(argv)} failed with exit code {rc}")
    screenshot(out / "explain.html", RESULTS / "explain_screenshot.png", width=width,
               height=height)
    return printed.getvalue()


def main() -> None:
    """Parse options, run, write the summary next to the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=2600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lowbit-explain-") as tmp:
        printed = run(Path(tmp) / "explain", args.width, args.height)
    printed = "\n".join(ln for ln in printed.splitlines() if not ln.startswith("wrote "))
    command = f"lowbit explain {MODEL} {TENSOR} " + " ".join(f"--scheme {s}" for s in SCHEMES)
    text = (f"# lowbit explain on a real tensor\n\n"
            f"Made by `benchmarks/explain_screenshot.py`: `{command}`; the page's screenshot "
            f"is `explain_screenshot.png`. What the command printed (the trace's checkpoints "
            f"are written under the script's scratch folder):\n\n```\n{printed.rstrip()}\n```\n")
    write_text_atomic(RESULTS / "explain.md", text)
    print(text)


if __name__ == "__main__":
    main()
