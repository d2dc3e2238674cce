"""The embedded server: the production `create_server` on a loopback port, in this process.

Started on first use when no server address is given, shared by every client in the process,
stopped at exit.
"""

from __future__ import annotations

import atexit
import threading

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
