"""Comments and docstrings speak of this repository as it is: no section of a design document
that is not here, no feature document, no history ("issue 10", "is retired")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("neural_attn", "dsl", "backends", "server", "client", "bench", "examples")
STALE = re.compile(r"DESIGN §|DESIGN\.md|feature document|\bissue \d+|\bis retired\b")


def _sources() -> list[Path]:
    files = [REPO / "Makefile", REPO / "pyproject.toml"]
    for folder in FOLDERS:
        files += [p for p in (REPO / folder).rglob("*.py") if "v1" not in p.parts]
    return files


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_stale_words(path):
    stale = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if STALE.search(line)
    ]
    assert not stale, "\n".join(stale)
