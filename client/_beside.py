"""A stream of attention into a sink on a thread of its own, beside the caller's work.

`visualize_from_dsl` streams the exact npz this way while it draws the figures and the page:
the figures are Python (matplotlib) and the stream is the server's pass, gRPC and file writes,
which mostly release the GIL, so the two overlap. With the embedded server on 2 cores, where
they share the CPU, 2 x 8 x 4,096² took 11.2-11.7 s instead of 11.8-12.2 (bench section 1,
alternating), and 17-19 s instead of 24 on a slower VM; against a remote server the npz's
download overlaps the drawing whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

from neural_attn.client._sinks import LayerHeader, LayerSink
from neural_attn.errors import CancelledError

T = TypeVar("T")


class Beside(Generic[T]):
    """`job(stop)` on a thread of its own. `result()` waits for what it returns or raises;
    `cancel()` sets `stop` (a `StoppingSink` then ends the stream at its next chunk) and waits;
    leaving a `with` block on an error (Ctrl-C too) cancels, so no stream outlives its call."""

    def __init__(self, job: Callable[[threading.Event], T], *, name: str) -> None:
        self._stop = threading.Event()
        self._outcome: list[tuple[bool, Any]] = []
        self._thread = threading.Thread(target=self._run, args=(job,), name=name, daemon=True)
        self._thread.start()

    def _run(self, job: Callable[[threading.Event], T]) -> None:
        try:
            self._outcome.append((True, job(self._stop)))
        except BaseException as exc:  # raised again by result()
            self._outcome.append((False, exc))

    def result(self) -> T:
        try:
            self._thread.join()
        except BaseException:  # interrupted while waiting
            self.cancel()
            raise
        done, value = self._outcome[0]
        if not done:
            raise value
        return value

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Beside[T]:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.cancel()


class StoppingSink:
    """Passes each call on to `inner`; refuses the next chunk once `stop` is set, which ends the
    stream (and its gRPC call) there."""

    def __init__(self, inner: LayerSink, stop: threading.Event) -> None:
        self._inner = inner
        self._stop = stop

    def begin(self, header: LayerHeader) -> None:
        self._inner.begin(header)

    def write(self, offset: int, values: np.ndarray) -> None:
        if self._stop.is_set():
            raise CancelledError("the stream was stopped: its caller ended")
        self._inner.write(offset, values)

    def end(self) -> Any:
        return self._inner.end()
