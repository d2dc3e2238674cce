"""A progress bar while attention streams in: bytes received and layers completed (tqdm).

``StreamProgress.wrap(sink)`` returns a sink that counts what passes through it on the way to
``sink``; the client's streaming code needs no change. The bar writes to stderr, so the
console report on stdout stays clean for ``--format json``. ``expected_bytes`` sizes what a
stream will bring, and ``npz_too_big`` the npz the CLI writes against its budget.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
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


def expected_bytes(
    shapes: list[tuple[int, ...]],
    *,
    itemsize: int,
    pool_size: int = 0,
    window: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> int:
    """Bytes of layers of these (batch, heads, q, k) shapes, cut to ``window`` (query and key
    [start, stop), a stop of 0: the end) and pooled to ``pool_size``, or not."""
    query, key = window or (None, None)
    total = 0
    for shape in shapes:
        rows, cols = Pooling.of(shape, pool_size, query=query, key=key).shape
        total += int(np.prod(shape[:-2], dtype=np.int64)) * rows * cols * itemsize
    return total


# attention_weights.npz is written when it takes at most this (exact float32 attention grows
# with the square of the length: 2 layers x 8 heads x 32,768 tokens is 64 GiB).
NPZ_MAX_BYTES = 2 * 1024**3


def _size(n: int) -> str:
    """Bytes as a CLI size: "1.5 GiB", "640 MiB"."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1024:.3g} KiB"


def npz_too_big(
    shapes: Sequence[tuple[int, ...]],
    *,
    dtype: str,
    window: tuple[tuple[int, int], tuple[int, int]] | None,
    budget: int | None,
) -> str | None:
    """Why attention_weights.npz is not written (over `budget` bytes; None: no budget), or None."""
    size = expected_bytes(list(shapes), itemsize=np.dtype(dtype).itemsize, window=window)
    if budget is None or size <= budget:
        return None
    seq = max(shape[-1] for shape in shapes)
    part = "this window of the attention" if window else "the exact attention"
    return (
        f"attention_weights.npz not written: {part} ({len(shapes)} layers, {dtype}, up to "
        f"{seq:,} x {seq:,} per head) would take {_size(size)}, over the {_size(budget)} budget. "
        f"Ask for it with --npz-max-bytes {math.ceil(size / 1024**3)}G, or for part of it, "
        "exact, with --window Q0:Q1,K0:K1 (e.g. --window 0:512,:)"
        + ("" if dtype == "float16" else "; --dtype float16 halves it")
        + ". The page, figures and metrics do not need it."
    )
