"""Headless Chromium for the browser tests (Debian's chromium-headless-shell, driven by
Playwright through ``executable_path``; Playwright's own browser download is not used)."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_path() -> str:
    """The browser's path, installing it with scripts/install_browser.sh if need be; skips
    (printing why) only when none is found and this user cannot install one."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_browser.sh")], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode == 3:  # not root or no apt-get: the only reasons to skip
        print(f"SKIPPED browser test: {proc.stderr.strip()}")
        pytest.skip(f"no headless Chromium: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"scripts/install_browser.sh failed:\n{proc.stderr}"
    return proc.stdout.strip().splitlines()[-1]
