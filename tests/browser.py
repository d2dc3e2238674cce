"""Debian's headless chromium for the page tests: the flags every run uses (no network at all:
every host name fails to resolve) and the page's DOM after its scripts ran."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path


def headless(profile: Path) -> list[str]:
    """The chromium command up to the page or mode to open, with its own profile folder."""
    return [
        shutil.which("chromium") or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        # Any name lookup fails: the page has to work with no network at all.
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]


def chromium_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (30 s of virtual time)."""
    command = [*headless(profile), "--virtual-time-budget=30000", "--dump-dom", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def view_status(dom: str) -> dict[str, str]:
    """The data-* attributes the page writes on #view-status after drawing."""
    match = re.search(r'<p id="view-status"([^>]*)>', dom)
    assert match, "the page wrote no view status"
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))
