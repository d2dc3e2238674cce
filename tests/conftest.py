"""Shared fixtures: the real gRPC server on a loopback port, and a client talking to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "attention_examples"
BACKENDS = ("tensorflow", "pytorch")


@pytest.fixture(scope="session")
def server_target() -> Iterator[str]:
    """A production server (create_server) on 127.0.0.1, port chosen by the OS."""
    from neural_attn.server.app import create_server

    server, port = create_server(host="127.0.0.1", port=0)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture()
def client(server_target: str) -> Iterator[object]:
    from neural_attn.client import AttentionClient

    with AttentionClient(server_target, timeout=120) as c:
        yield c
