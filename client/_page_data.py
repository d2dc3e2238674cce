"""The attention page's data (``attention_interactive.html``'s JSON block): what each layer,
batch item and head draws, encoded as ``_html.py``'s docstring describes, and how far the page
pools to stay small. ``_html.py`` assembles the page around it.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from neural_attn import analysis, wire
from neural_attn.analysis import Metric
from neural_attn.client._views import (
    DISPLAY_SIZE,
    axis_tokens,
    batch_item,
    display_pooling,
    head_view,
    masked_cells,
    mean_view,
)
from neural_attn.pooling import Pooling, block_size, pooled_length

ENCODING = "float16-le-base64"
EXACT_VALUES_FILE = "attention_weights.npz"
# Batches up to this size put every item on the page (selectable)...
MAX_PAGE_ITEMS = 8
# ...while their data stays under this many bytes; otherwise only the chosen item.
MAX_ITEMS_BYTES = 16 * 2**20
# The drawn matrices of one page (base64 text) stay under this many bytes, so that the page
# with plotly.js stays under 15 MB: a longer or deeper model is pooled further for the page
# alone (figures and the npz are not), so 6 layers x 12 heads at 512 tokens still make a page
# a browser opens at once (bertviz writes 869 MB there).
PAGE_DATA_BYTES = 13 * 10**6
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@functools.cache
def _colormap_hex() -> str:
    """viridis as 256 six-digit hex colours, for the overview's thumbnails."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].resampled(256)
    rgb = (np.asarray(cmap(np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(np.uint8)
    return rgb.tobytes().hex()


def _encode(matrix: np.ndarray, mask: np.ndarray | None = None) -> str:
    """float16 little-endian bytes of the matrix, base64; ``mask`` cells become NaN."""
    clipped = np.clip(matrix, 0.0, _FLOAT16_MAX).astype(np.float32, copy=False)
    values = wire.cast(clipped, np.dtype("<f2"))
    if mask is not None:
        values[mask] = np.nan
    return base64.b64encode(np.ascontiguousarray(values).tobytes()).decode("ascii")


def _unique_labels(tokens: list[str] | None, n: int) -> list[str] | list[int]:
    """Axis categories; a repeated token gets its position so plotly keeps the cells apart."""
    if tokens is None:
        return list(range(n))
    counts: dict[str, int] = {}
    for token in tokens:
        counts[token] = counts.get(token, 0) + 1
    return [t if counts[t] == 1 else f"{t} ({i})" for i, t in enumerate(tokens)]


def _axis_labels(
    tokens: list[str] | None, length: int, span: tuple[int, int], block: int, exact: bool
) -> list[str] | list[int]:
    """Labels of one axis: tokens (or positions) when exact, else each block's positions."""
    start, stop = span
    if exact and (start, stop) == (0, length):
        return _unique_labels(tokens, length)
    if block == 1:
        return list(range(start, stop))
    return [f"{s}–{min(s + block, stop) - 1}" for s in range(start, stop, block)]


def _page_metrics() -> list[Metric]:
    """The numbers the page shows, as `analysis.METRICS` names them (the label apart)."""
    return [m for m in analysis.METRICS if m.label is not None]


def _head_count(metrics: Mapping[str, Any]) -> int:
    return int(metrics.get("num_heads", len(metrics.get("attention_entropy", []))))


def _pooling_data(pooling: Pooling) -> dict[str, Any]:
    """A layer's pooling as the page's script reads it."""
    return {
        "query_block": pooling.query_block,
        "key_block": pooling.key_block,
        "mode": pooling.mode,
        "source_len": list(pooling.source_len),
        "query_range": list(pooling.query),
        "key_range": list(pooling.key),
    }


def _display_shape(
    attention: Any, given: Pooling | None, size: int = DISPLAY_SIZE
) -> tuple[int, int, int]:
    """(heads, rows, columns) of a layer as drawn at display size `size`, from its shape alone."""
    shape = np.shape(attention)
    heads = int(shape[-3]) if len(shape) >= 3 else 1
    if given is not None:
        return (heads, *given.shape)
    pooling = display_pooling(shape[-2:], size)
    rows, cols = pooling.shape if pooling is not None else (int(shape[-2]), int(shape[-1]))
    return heads, rows, cols


def _page_bytes(
    attention_by_layer: Mapping[str, Any], given: Mapping[str, Pooling | None], size: int
) -> int:
    """Base64 bytes of one batch item's drawn matrices (each head and the mean) at `size`."""
    cells = 0
    for name, attention in attention_by_layer.items():
        heads, rows, cols = _display_shape(attention, given[name], size)
        cells += (heads + 1) * rows * cols
    return -(-cells * 2 // 3) * 4


def _page_size(
    attention_by_layer: Mapping[str, Any], given: Mapping[str, Pooling | None], items: int
) -> int:
    """The display size of the page: DISPLAY_SIZE, or smaller until its data fits
    PAGE_DATA_BYTES (more positions per pooled cell, one step at a time)."""
    longest = max(int(n) for a in attention_by_layer.values() for n in np.shape(a)[-2:])
    block, size = block_size(longest, DISPLAY_SIZE), DISPLAY_SIZE
    while size > 1 and items * _page_bytes(attention_by_layer, given, size) > PAGE_DATA_BYTES:
        block += 1
        size = pooled_length(longest, block)
    return size


def _page_items(
    attention_by_layer: Mapping[str, Any],
    batch_index: int,
    given: Mapping[str, Pooling | None],
) -> list[int]:
    """Batch items to put on the page: all of a small batch if they fit, else the chosen."""
    first = next(iter(attention_by_layer.values()))
    batch = int(np.shape(first)[0]) if np.ndim(first) == 4 else 1
    per_item = _page_bytes(attention_by_layer, given, DISPLAY_SIZE) * 3 // 4
    if 1 < batch <= MAX_PAGE_ITEMS and batch * per_item <= MAX_ITEMS_BYTES:
        return list(range(batch))
    return [batch_index]


def _layer_data(
    name: str,
    attention: Any,
    *,
    items: list[int],
    tokens: Sequence[str] | None,
    given: Pooling | None,
    size: int,
) -> tuple[dict[str, Any], Pooling | None]:
    """One layer's entry of the page data at display size `size`, and how it was pooled
    (None: exact)."""
    views_by_item = []
    drawn: Pooling | None = None
    heads = rows = cols = 0
    for b in items:
        item = batch_item(attention, batch_index=b, name=name, pooling=given)
        heads = item.shape[0]
        mean, drawn = mean_view(item, given, size)
        rows, cols = mean.shape
        head_views = [head_view(item, h, given, size)[0] for h in range(heads)]
        mask = masked_cells(head_views)
        matrices = [(f"mean of {heads} heads", mean)]
        matrices += [(f"head {h}", matrix) for h, matrix in enumerate(head_views)]
        prefix = f"item {b} — " if len(items) > 1 else ""
        views = [
            {"label": label, "title": f"{prefix}{name} — {label}", "data": _encode(matrix, mask)}
            for label, matrix in matrices
        ]
        views_by_item.append(
            {"index": b, "views": views, "masked": 0 if mask is None else int(mask.sum())}
        )
    source = drawn.source_len if drawn is not None else (rows, cols)
    query_tokens, key_tokens = axis_tokens(tokens, *source)
    exact = drawn is None or not drawn.pooled
    spans = (drawn.query, drawn.key) if drawn else ((0, rows), (0, cols))
    blocks = (drawn.query_block, drawn.key_block) if drawn else (1, 1)
    layer = {
        "name": name,
        "shape": [int(n) for n in np.shape(attention)],
        "heads": heads,
        "display_shape": [int(rows), int(cols)],
        "pooling": None if drawn is None else _pooling_data(drawn),
        "note": "" if drawn is None else drawn.note(),
        "y": _axis_labels(query_tokens, source[0], spans[0], blocks[0], exact),
        "x": _axis_labels(key_tokens, source[1], spans[1], blocks[1], exact),
        "items": views_by_item,
        "metrics": None,
    }
    return layer, drawn


def _head_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """One layer's per-head numbers and labels for the page's side panel (no matrices)."""
    if metrics is None:
        return None
    heads = _head_count(metrics)
    numbers = {}
    for m in _page_metrics():
        values = metrics.get(m.key)
        if values is not None and len(values) == heads:
            numbers[m.label] = [float(v) for v in values]
    averages = {m.label: metrics.get(m.average) for m in _page_metrics() if m.average}
    return {
        "per_head": numbers,
        "mean": {k: float(v) for k, v in averages.items() if v is not None},
        "pattern": [str(p) for p in metrics.get("pattern_per_head") or ["–"] * heads],
    }


def _rollout_data(
    rollout: Any,
    items: list[int],
    tokens: Sequence[str] | None,
    layers: list[str],
    *,
    pooled: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The rollout view: one matrix per batch item (or one for all), pooled like a head.

    `pooled` (``analysis["rollout_pooling"]``): the rollout is of pooled matrices, a cell per
    block of ``block`` positions of ``size``; the page then labels cells with those positions
    and says so.
    """
    if rollout is None:
        return None
    arr = np.asarray(rollout, dtype=np.float64)
    if arr.ndim == 2:
        per_item = {b: arr for b in items}
    elif arr.ndim == 3 and arr.shape[0] > max(items):
        per_item = {b: arr[b] for b in items}
    else:
        return None
    entries: list[dict[str, Any]] = []
    pooling = display_pooling(arr.shape[-2:])
    for b, matrix in per_item.items():
        shown = matrix if pooling is None else pooling.apply(matrix)
        entries.append({"index": b, "data": _encode(shown)})
    rows, cols = pooling.shape if pooling else (int(arr.shape[-2]), int(arr.shape[-1]))
    title = f"attention rollout through {', '.join(layers)}"
    note = "" if pooling is None else pooling.note()
    if pooled:  # each cell's source positions: the rollout's blocks, times the display's
        n, block = int(pooled["size"]), int(pooled["block"])
        scale = pooling.query_block if pooling else 1
        pooling = Pooling((n, n), (0, n), (0, n), block * scale, block * scale, "mean")
        title += f" (of layers pooled to blocks of {block} positions)"
        exact_max = analysis.ROLLOUT_EXACT_MAX
        note = (
            f"rollout of each layer pooled to {arr.shape[-1]}×{arr.shape[-1]} (block {block}: "
            f"{pooled['method']}), then multiplied; exact only up to {exact_max:,} positions"
            + (f"; {note} for display" if note else "")
        )
    q, k = pooling.source_len if pooling else (rows, cols)
    query_tokens, key_tokens = axis_tokens(tokens, q, k) if tokens else (None, None)
    blocks = (pooling.query_block, pooling.key_block) if pooling else (1, 1)
    exact = pooling is None
    return {
        "label": "rollout",
        "title": title,
        "display_shape": [rows, cols],
        "pooling": None if pooling is None else _pooling_data(pooling),
        "note": note,
        "y": _axis_labels(query_tokens, q, (0, q), blocks[0], exact),
        "x": _axis_labels(key_tokens, k, (0, k), blocks[1], exact),
        "items": entries,
    }
