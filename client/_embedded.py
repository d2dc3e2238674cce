"""Which server a client talks to, and the embedded server: the production `create_server` on
a loopback port, in this process.

`server_target` is the one place that decides: an address given, else $NEURAL_ATTN_SERVER,
else the embedded server, started on first use, shared by every client in the process,
stopped at exit.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable

from neural_attn.errors import BackendUnavailableError

_lock = threading.Lock()
_target: str | None = None


def embedded_target() -> str:
    """Start (once) the in-process server and return its "127.0.0.1:port"."""
    global _target
    with _lock:
        if _target is None:
            try:
                from neural_attn.server.app import create_server
            except ImportError as exc:
                raise BackendUnavailableError(
                    "no server address was given and this install cannot run the embedded "
                    f"server ({exc}). Install the server extras with "
                    "`pip install 'neural-attn[server]'`, or point at a running server with "
                    "--server host:port (or NEURAL_ATTN_SERVER=host:port)."
                ) from exc
            server, port = create_server(host="127.0.0.1", port=0)
            server.start()
            atexit.register(server.stop, None)
            _target = f"127.0.0.1:{port}"
        return _target


def server_target(
    explicit: str | None = None, *, announce: Callable[[str], None] | None = None
) -> tuple[str, bool]:
    """(target, embedded): `explicit`, else $NEURAL_ATTN_SERVER, else the embedded server's
    loopback address (started now if it is not running; `announce` is told so)."""
    target = explicit or os.environ.get("NEURAL_ATTN_SERVER")
    if target:
        return target, False
    if announce is not None:
        announce("starting the embedded server on loopback (no --server given)")
    return embedded_target(), True
