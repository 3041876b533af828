#!/usr/bin/env bash
# Best effort: install Debian's chromium for the report's browser test. Without it (no root, no
# apt-get) that one test skips and says why; everything else runs.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: installing Debian's chromium (for tests/report/test_html_browser.py)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null && exit 0
fi
echo "install_chromium: chromium not installed; the browser test will be skipped" >&2
exit 0
