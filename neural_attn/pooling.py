"""How a layer's attention is cut and pooled: the block arithmetic, and `Pooling`, which says it.

A layer's attention ``[batch, head, query, key]`` may be cut to a query window and a key window
(``[start, stop)`` in source positions), and each axis then pooled in blocks of
``block_size(length, target)`` positions, ``ceil(length / target)``, so that at most ``target``
cells remain; the last block of an axis may be partial. A cell is the max or the mean over the
positions its block covers.

The server's request (``backends/streaming.Reduction``) and each backend's framework ops compute
blocks with these functions; the client's figures and page pool with ``pool`` when an axis is
longer than they draw. ``Pooling`` is the one description of the result, carried from the server's
reduction (``server/convert.py`` writes it into each chunk, ``client/_client.py`` reads it back)
to the sinks, the figures, the page, the progress bar and ``analysis.json``.

numpy only: the thin client imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "POOL_MODES",
    "Pooling",
    "block_counts",
    "block_size",
    "fold_keys",
    "fold_rows",
    "pool",
    "pooled_length",
]

POOL_MODES = ("max", "mean")


def block_size(length: int, target: int) -> int:
    """Positions per pooled cell so that ``length`` positions become at most ``target`` cells
    (a ``target`` of 0 or less: no pooling, blocks of 1)."""
    return 1 if target <= 0 or length <= target else -(-length // target)


def pooled_length(length: int, block: int) -> int:
    """How many cells blocks of ``block`` positions make of ``length`` (the last may be partial)."""
    return -(-length // block)


def block_counts(length: int, block: int, dtype: Any = np.float32) -> np.ndarray:
    """How many source positions each pooled cell covers (the last may cover fewer)."""
    counts = np.full(pooled_length(length, block), block, dtype=dtype)
    counts[-1] = length - block * (len(counts) - 1)
    return counts


def pool(arr: np.ndarray, query_block: int, key_block: int, mode: str) -> np.ndarray:
    """The last two axes of ``arr`` pooled in blocks (the last one partial) by max or mean.

    Max keeps ``arr``'s dtype (and returns ``arr`` itself for blocks of 1); mean sums in
    float64 and is float64.
    """
    q = arr.shape[-2]
    row_starts = np.arange(0, q, query_block)
    if mode == "max":
        out = arr if query_block == 1 else fold_rows(arr, row_starts, "max")
        return out if key_block == 1 else fold_keys(out, key_block, "max")
    sums = fold_keys(fold_rows(arr, row_starts, "mean"), key_block, "mean")
    result: np.ndarray = sums / block_counts(q, query_block, dtype=np.float64)[:, None]
    return result


def fold_keys(arr: np.ndarray, block: int, mode: str) -> np.ndarray:
    """The last axis of ``arr`` reduced in blocks of ``block`` (the last one partial): their
    max (``arr``'s dtype), or their mean in float64."""
    k = arr.shape[-1]
    starts = np.arange(0, k, block)
    if mode == "max":
        return np.maximum.reduceat(arr, starts, axis=-1)
    sums = np.add.reduceat(arr, starts, axis=-1, dtype=np.float64)
    result: np.ndarray = sums / block_counts(k, block, dtype=np.float64)
    return result


# Up to this many segments, fold_rows reduces each with one call: numpy's reduceat along an
# axis that is not the last one is about 10x slower than a max or sum over whole rows (16 rows
# of 8 x 32,768: 28 ms against 2.7), and a call per segment only loses once there are many
# short ones (1,024 segments of 32 rows of 16: 1.1 ms against 4.1).
_FEW_SEGMENTS = 64


def fold_rows(arr: np.ndarray, starts: np.ndarray, mode: str) -> np.ndarray:
    """The rows (axis -2) of ``arr`` reduced in the segments that begin at ``starts`` (rising,
    the first 0): their max (``arr``'s dtype), or for "mean" their float64 sums (the caller
    divides by the counts)."""
    if len(starts) > _FEW_SEGMENTS:
        if mode == "max":
            return np.maximum.reduceat(arr, starts, axis=-2)
        return np.add.reduceat(arr, starts, axis=-2, dtype=np.float64)
    bounds = [*(int(a) for a in starts), arr.shape[-2]]
    segments = [arr[..., a:b, :] for a, b in zip(bounds, bounds[1:], strict=False)]
    if mode == "max":
        return np.stack([segment.max(axis=-2) for segment in segments], axis=-2)
    return np.stack([segment.sum(axis=-2, dtype=np.float64) for segment in segments], axis=-2)


@dataclass(frozen=True)
class Pooling:
    """How a layer's attention was cut and pooled.

    Rows are source query positions ``[query[0], query[1])`` in blocks of ``query_block`` (the
    last block may be shorter), columns likewise for keys; a cell is its block's ``mode``
    ("max" or "mean"). Blocks of 1 are exact values.
    """

    source_shape: tuple[int, ...]  # the attention before it was cut: (..., query, key)
    query: tuple[int, int]  # [start, stop) in source positions
    key: tuple[int, int]
    query_block: int
    key_block: int
    mode: str

    @classmethod
    def of(
        cls,
        source_shape: Sequence[int],
        target: int,
        mode: str = "max",
        *,
        query: tuple[int, int] | None = None,
        key: tuple[int, int] | None = None,
    ) -> Pooling:
        """A layer of ``source_shape`` cut to the windows (None: the whole axis; a stop of 0:
        to the end), then each axis pooled to at most ``target`` cells (0: not pooled)."""
        shape = tuple(int(n) for n in source_shape)
        q0, q1 = query or (0, 0)
        k0, k1 = key or (0, 0)
        q1, k1 = q1 or shape[-2], k1 or shape[-1]
        return cls(
            source_shape=shape,
            query=(q0, q1),
            key=(k0, k1),
            query_block=block_size(q1 - q0, target),
            key_block=block_size(k1 - k0, target),
            mode=mode,
        )

    @property
    def source_len(self) -> tuple[int, int]:
        """The whole layer's (query, key) lengths, before any window."""
        return self.source_shape[-2], self.source_shape[-1]

    @property
    def shape(self) -> tuple[int, int]:
        """The pooled matrix's (rows, columns)."""
        (q0, q1), (k0, k1) = self.query, self.key
        return pooled_length(q1 - q0, self.query_block), pooled_length(k1 - k0, self.key_block)

    @property
    def pooled(self) -> bool:
        return self.query_block > 1 or self.key_block > 1

    @property
    def windowed(self) -> bool:
        return (self.query, self.key) != ((0, self.source_len[0]), (0, self.source_len[1]))

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """The last two axes of an exact ``arr`` of the source's lengths, cut and pooled."""
        (q0, q1), (k0, k1) = self.query, self.key
        return pool(arr[..., q0:q1, k0:k1], self.query_block, self.key_block, self.mode)

    def note(self) -> str:
        """``"max-pooled to 512×512 (block 8)"`` and, for a window, which one."""
        parts = []
        if self.windowed:
            (q0, q1), (k0, k1) = self.query, self.key
            parts.append(f"queries {q0}–{q1 - 1} × keys {k0}–{k1 - 1}")
        if self.pooled:
            rows, cols = self.shape
            if self.query_block == self.key_block:
                block = f"block {self.query_block}"
            else:
                block = f"blocks {self.query_block}×{self.key_block}"
            parts.append(f"{self.mode}-pooled to {rows}×{cols} ({block})")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The description as JSON-ready values (``analysis.json``'s ``display_pooling``)."""
        return {
            "source_shape": list(self.source_shape),
            "query": list(self.query),
            "key": list(self.key),
            "query_block": self.query_block,
            "key_block": self.key_block,
            "mode": self.mode,
        }
