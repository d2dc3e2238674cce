"""A progress bar while attention streams in: bytes received and layers completed (tqdm).

``StreamProgress.wrap(sink)`` returns a sink that counts what passes through it on the way to
``sink``; the client's streaming code needs no change. The bar writes to stderr, so the
console report on stdout stays clean for ``--format json``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from neural_attn.client._sinks import LayerHeader, LayerSink
from neural_attn.pooling import Pooling

__all__ = ["StreamProgress", "expected_bytes"]


class StreamProgress:
    """One bar for one stream of attention layers.

    Args:
        what: the bar's label ("attention for display", "attention_weights.npz").
        layers: how many layers the stream will bring.
        total_bytes: what they add up to, when known (a window's size is not).
        enabled: False draws nothing (``--quiet``).
    """

    def __init__(
        self, what: str, *, layers: int, total_bytes: int | None, enabled: bool = True
    ) -> None:
        from tqdm import tqdm

        self.layers = layers
        self.done = 0
        self._bar = tqdm(
            total=total_bytes,
            desc=what,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not enabled,
            leave=True,
            mininterval=0.2,
            dynamic_ncols=True,
            postfix=f"layers 0/{layers}",
        )

    def wrap(self, sink: LayerSink) -> LayerSink:
        return _CountingSink(sink, self)

    def _wrote(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def _layer_done(self, name: str) -> None:
        self.done += 1
        self._bar.set_postfix_str(f"layers {self.done}/{self.layers} ({name})", refresh=True)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> StreamProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CountingSink:
    """Passes each call on to ``inner``, telling the bar what went by."""

    def __init__(self, inner: LayerSink, progress: StreamProgress) -> None:
        self._inner = inner
        self._progress = progress
        self._name = ""

    def begin(self, header: LayerHeader) -> None:
        self._name = header.name
        self._inner.begin(header)

    def write(self, offset: int, values: np.ndarray) -> None:
        self._inner.write(offset, values)
        self._progress._wrote(int(values.nbytes))

    def end(self) -> Any:
        out = self._inner.end()
        self._progress._layer_done(self._name)
        return out


def expected_bytes(shapes: list[tuple[int, ...]], *, itemsize: int, pool_size: int = 0) -> int:
    """Bytes of layers of these (batch, heads, q, k) shapes, pooled to ``pool_size`` or not."""
    total = 0
    for shape in shapes:
        rows, cols = Pooling.of(shape, pool_size).shape
        total += int(np.prod(shape[:-2], dtype=np.int64)) * rows * cols * itemsize
    return total
