"""What the figures (``render``) and the page (``_html``) draw of a layer: one batch item, a head
or the mean of heads, pooled for display when an axis is longer than ``DISPLAY_SIZE``.

Pooling is per head (the head mean a block of rows at a time), so no float64 copy of a layer is
ever made; the blocks and the description are ``neural_attn.pooling``'s. Data the server already
pooled comes with its ``Pooling`` and is drawn as it is. Callers of the public drawing functions
may also describe it with a dict (``pool_for_display``'s ``info``, or a chunk's ``Reduction`` as
a dict: ``query_block``, ``key_block``, ``mode``, ``source_shape`` and optionally the window
``query_start/stop``, ``key_start/stop``); ``pooling_from_mapping`` reads those, and only those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

from neural_attn.errors import InvalidInputError
from neural_attn.pooling import POOL_MODES, Pooling, pool

# Figures and the page show at most this many positions per axis; longer axes are pooled.
DISPLAY_SIZE = 512
# Behind masked cells (exactly 0 in every head), hatched: never confused with a low value.
MASKED_COLOR = "#d9d9d9"
# float64 bytes of the rows summed at once for a pooled head mean.
_CHUNK_BYTES = 16 * 2**20
# The keys that make a mapping one description rather than {layer: description}.
_DESCRIPTION_KEYS = frozenset({"query_block", "key_block", "mode", "source_len", "source_shape"})

# What the public drawing functions take as `pooling=`: a description, or one as a dict.
PoolingArg: TypeAlias = Pooling | Mapping[str, Any] | None


def display_pooling(
    shape: Sequence[int], size: int = DISPLAY_SIZE, mode: str = "max"
) -> Pooling | None:
    """How a matrix of ``shape`` (its last two axes) is pooled to at most ``size`` positions an
    axis for drawing; None when both axes fit."""
    pooling = Pooling.of(shape, size, mode)
    return pooling if pooling.pooled else None


def pooling_from_mapping(info: Mapping[str, Any]) -> Pooling:
    """A caller's dict description: ``pool_for_display``'s info or a ``Reduction``-shaped dict
    (its mode as "max", "MAX", "POOL_MODE_MAX" or the enum's number)."""
    if "source_len" in info:
        shape = tuple(int(n) for n in info["source_len"])
    elif "source_shape" in info:
        shape = tuple(int(n) for n in info["source_shape"])
    else:
        raise InvalidInputError(
            "pooling needs 'source_len' (q, k) or 'source_shape' (batch, heads, q, k)"
        )
    source = shape[-2:]
    if len(source) != 2:
        raise InvalidInputError(f"pooling source {source} is not a (query_len, key_len)")
    mode = info.get("mode", "max")
    mode = {0: "max", 1: "max", 2: "mean"}.get(mode, mode) if isinstance(mode, int) else mode
    mode = str(mode).lower().removeprefix("pool_mode_")
    mode = "max" if mode == "unspecified" else mode
    if mode not in POOL_MODES:
        raise InvalidInputError(f"pooling mode {mode!r} is not one of {', '.join(POOL_MODES)}")
    q, k = source

    def window(start_key: str, stop_key: str, length: int) -> tuple[int, int]:
        start, stop = int(info.get(start_key) or 0), int(info.get(stop_key) or 0)
        return start, stop or length  # a stop of 0 means the end

    return Pooling(
        source_shape=shape,
        query=window("query_start", "query_stop", q),
        key=window("key_start", "key_stop", k),
        query_block=max(1, int(info.get("query_block") or 1)),
        key_block=max(1, int(info.get("key_block") or 1)),
        mode=mode,
    )


def one_pooling(pooling: PoolingArg) -> Pooling | None:
    """One layer's description, given as a ``Pooling`` or a dict."""
    if pooling is None or isinstance(pooling, Pooling):
        return pooling
    return pooling_from_mapping(pooling)


def layer_pooling(pooling: PoolingArg, name: str) -> Pooling | None:
    """Layer ``name``'s description from one for every layer, or ``{layer: description}``."""
    if isinstance(pooling, Pooling):
        return pooling
    if not pooling:
        return None
    if _DESCRIPTION_KEYS & set(pooling):
        return pooling_from_mapping(pooling)
    return one_pooling(pooling.get(name))


def batch_item(
    attention: Any,
    *,
    batch_index: int,
    name: str = "attention",
    pooling: Pooling | None = None,
) -> np.ndarray:
    """One batch item as a ``(heads, q, k)`` view of the input (no copy, no float64)."""
    arr = np.asarray(attention)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim == 4:
        if not 0 <= batch_index < arr.shape[0]:
            raise InvalidInputError(
                f"batch_index {batch_index} is out of range for {name} of shape "
                f"{tuple(arr.shape)}; use 0..{arr.shape[0] - 1}"
            )
        arr = arr[batch_index]
    elif arr.ndim == 2:
        arr = arr[np.newaxis]
    elif arr.ndim != 3:
        raise InvalidInputError(
            f"{name} has shape {tuple(arr.shape)}; expected (batch, heads, query_len, key_len), "
            "(heads, query_len, key_len) or (query_len, key_len)"
        )
    # min and max are NaN or infinite when any value is, without a full-size temporary.
    if arr.size == 0 or not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        raise InvalidInputError(
            f"{name} of shape {tuple(arr.shape)} is empty or holds NaN/inf; nothing to draw"
        )
    if pooling is not None and tuple(arr.shape[-2:]) != pooling.shape:
        raise InvalidInputError(
            f"{name} is {arr.shape[-2]}x{arr.shape[-1]} but its pooling says "
            f"{pooling.shape[0]}x{pooling.shape[1]} ({pooling.note() or 'exact'})"
        )
    return arr


def head_view(
    item: np.ndarray, head: int, given: Pooling | None, size: int = DISPLAY_SIZE
) -> tuple[np.ndarray, Pooling | None]:
    """One head as drawn: max-pooled above ``size`` unless the server pooled it."""
    if given is not None:
        return item[head], given
    matrix = item[head]
    pooling = display_pooling(matrix.shape, size)
    if pooling is None:
        return matrix, None
    return pool(matrix, pooling.query_block, pooling.key_block, pooling.mode), pooling


def mean_view(
    item: np.ndarray, given: Pooling | None, size: int = DISPLAY_SIZE
) -> tuple[np.ndarray, Pooling | None]:
    """The mean over heads as drawn: the max-pooled mean, summed a block of rows at a time.

    Data the server pooled is averaged as it came (the mean of pooled heads).
    """
    heads, q, k = item.shape
    pooling = None if given is not None else display_pooling((q, k), size)
    if pooling is None:
        return item.mean(axis=0, dtype=np.float64), given
    query_block, key_block = pooling.query_block, pooling.key_block
    # Whole query blocks per chunk, so each chunk pools on its own.
    rows = query_block * max(1, _CHUNK_BYTES // (8 * k * query_block))
    pooled = []
    for start in range(0, q, rows):
        chunk = np.zeros((min(rows, q - start), k))
        for head in item:
            chunk += head[start : start + rows]
        chunk /= heads
        pooled.append(pool(chunk, query_block, key_block, "max"))
    return np.concatenate(pooled), pooling


def masked_cells(views: Sequence[np.ndarray]) -> np.ndarray | None:
    """Cells that are exactly 0 in every view: masked keys (padding, the causal triangle).

    Softmax gives an exact 0 only where a mask put -inf (or on a rare underflow, which would
    have to happen in every head at once), so such cells are drawn as masked, not as zero.
    """
    mask = views[0] == 0
    for view in views[1:]:
        if not mask.any():
            break
        mask &= view == 0
    return mask if mask.any() else None


def axis_tokens(
    tokens: Sequence[str] | None, q: int, k: int
) -> tuple[list[str] | None, list[str] | None]:
    """Token labels for the (query, key) axes; an axis whose length differs gets none."""
    if tokens is None:
        return None, None
    labels = [str(t) for t in tokens]
    if len(labels) not in (q, k):
        raise InvalidInputError(
            f"{len(labels)} tokens given but the attention is {q} queries x {k} keys; "
            f"pass {q} tokens"
        )
    return (labels if len(labels) == q else None), (labels if len(labels) == k else None)


def per_layer(analysis: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Accept ``{layer: metrics}`` or the ``analysis.json`` shape ``{"layers": {...}, ...}``."""
    if analysis is None:
        return {}
    layers = analysis.get("layers")
    # A layer named "layers" holds metrics (num_heads); analysis.json's "layers" holds layers.
    if isinstance(layers, Mapping) and "num_heads" not in layers:
        return layers
    return analysis
