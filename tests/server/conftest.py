"""Fixtures for the server tests: the installed `neural-attn-server` command as a subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import ServerProcess


@pytest.fixture()
def start_server(tmp_path: Path) -> Iterator[object]:
    """`start_server(*args, env=...)` -> a started `ServerProcess`; all are killed at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(tmp_path / f"server-{len(started)}.log", *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
