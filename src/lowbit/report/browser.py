"""Open a report in a real headless browser (Debian's ``chromium``): a screenshot, and the DOM
after the page has loaded (to check that its images decoded)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get install -y chromium (Debian)"


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome executable on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(f"no chromium on PATH (looked for {', '.join(CANDIDATES)}); "
                                f"install it: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="lowbit-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(page: str | Path, png: str | Path, *, width: int = 1200, height: int = 2000,
               timeout: float = 120.0) -> Path:
    """Render ``page`` (a local HTML file) and save a PNG screenshot of ``width`` x ``height``."""
    page, png = Path(page).resolve(), Path(png).resolve()
    png.unlink(missing_ok=True)
    proc = _run([f"--screenshot={png}", f"--window-size={width},{height}",
                 "--hide-scrollbars", page.as_uri()], timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {page} (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return png


def dump_dom(page: str | Path, *, timeout: float = 120.0) -> str:
    """The page's DOM serialised after load (scripts in the page have run)."""
    proc = _run(["--dump-dom", "--virtual-time-budget=5000", Path(page).resolve().as_uri()],
                timeout)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"chromium --dump-dom failed on {page} (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return proc.stdout
