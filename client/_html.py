"""The offline attention page (``attention_interactive.html``): data binary, drawn by Plotly.

The page is one file: plotly.js inlined once (the "cartesian" partial bundle, 1.5 MB, vendored
in ``assets/``: it has the heatmap and bar traces the page draws, a third of the full
4.8 MB bundle), a ``<script type="application/json" id="attention-data">`` block, and the
page's own script (``assets/page.js``) and style (``assets/page.css``). The bundle is npm's
``plotly.js-cartesian-dist-min`` 4.1.1 (MIT, ``assets/plotly-LICENSE.txt``), the plotly.js
version the plotly Python package bundles; to update it, ``npm pack`` that package and copy
its ``plotly-cartesian.min.js`` over the vendored file.

What it shows: an overview of every head of every layer (thumbnails with their pattern label;
a click opens one large), the chosen layer's heads, their mean or the attention rollout as a
heatmap with token labels on the axes and in the hover, the chosen head's metrics beside it,
and the attention one query token pays over the sequence (click a row, or choose the token).

Encoding of the matrices: each drawn matrix (one head, or the mean of heads, of one batch
item; the rollout) is the float16 little-endian bytes of its C-order ``(rows, cols)`` values,
in base64 (``"encoding": "float16-le-base64"``). float16 keeps about 3 significant digits at
every magnitude (down to 6e-8), so small probabilities still read back, at 2 bytes a cell; the
page decodes them with a 65,536-entry table. Masked cells (exactly 0 in every head: padding,
the causal triangle) are float16 NaN and are drawn grey, never as zero. Above
``DISPLAY_SIZE`` positions each head is max-pooled (``_views``, as ``render.pool_for_display``)
and the page says so, naming ``attention_weights.npz`` for the exact values; each layer's
``pooling`` in the data is its ``Pooling`` (``_pooling_data``).

The page reads ``#layer=L&item=B&view=V&query=Q`` (indices; ``view`` 0 is the mean, 1..H the
heads, H+1 the rollout) from its address to open on a view. After each draw it writes what it
drew as ``data-*`` attributes: ``#view-status`` (title, shape, sum, max and where it is),
``#query-status`` (the query and its row) and ``#overview`` (how many thumbnails were
drawn), which is also how the browser tests check it.
"""

from __future__ import annotations

import base64
import functools
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neural_attn import analysis
from neural_attn.analysis import Metric, analyze_attention_patterns
from neural_attn.client._views import (
    DISPLAY_SIZE,
    MASKED_COLOR,
    PoolingArg,
    axis_tokens,
    batch_item,
    display_pooling,
    head_view,
    layer_pooling,
    masked_cells,
    mean_view,
    per_layer,
)
from neural_attn.errors import InvalidInputError
from neural_attn.pooling import Pooling, block_size, pooled_length

ASSETS = Path(__file__).resolve().parent / "assets"
PLOTLY_BUNDLE = "plotly-cartesian.min.js"
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
def plotly_js() -> str:
    """The plotly.js bundle the page inlines (the vendored partial bundle)."""
    return (ASSETS / PLOTLY_BUNDLE).read_text(encoding="utf-8")


@functools.cache
def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


@functools.cache
def _colormap_hex() -> str:
    """viridis as 256 six-digit hex colours, for the overview's thumbnails."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].resampled(256)
    rgb = (np.asarray(cmap(np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(np.uint8)
    return rgb.tobytes().hex()


def _encode(matrix: np.ndarray, mask: np.ndarray | None = None) -> str:
    """float16 little-endian bytes of the matrix, base64; ``mask`` cells become NaN."""
    values = np.clip(matrix, 0.0, _FLOAT16_MAX).astype("<f2")
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


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


def _page_metrics() -> list[Metric]:
    """The numbers the page shows, as `analysis.METRICS` names them (the label apart)."""
    return [m for m in analysis.METRICS if m.label is not None]


def _head_count(metrics: Mapping[str, Any]) -> int:
    return int(metrics.get("num_heads", len(metrics.get("attention_entropy", []))))


def _metrics_table(name: str, metrics: Mapping[str, Any] | None) -> str:
    """One layer's per-head metrics as a plain HTML table."""
    if metrics is None:
        return (
            f"<h2>{html.escape(name)}</h2>\n<p class='note'>No metrics: this layer arrived "
            "pooled, and the metrics need the exact attention (they are in analysis.json).</p>"
        )
    columns = _page_metrics()
    heads = _head_count(metrics)
    header = "".join(f"<th>{html.escape(m.label or '')}</th>" for m in columns)
    rows = []
    for h in range(heads):
        cells = "".join(
            f"<td>{_fmt((metrics.get(m.key) or [None] * heads)[h])}</td>" for m in columns
        )
        pattern = (metrics.get("pattern_per_head") or ["–"] * heads)[h]
        rows.append(f"<tr><th>head {h}</th>{cells}<td>{html.escape(str(pattern))}</td></tr>")
    mean_cells = "".join(
        f"<td>{_fmt(metrics.get(m.average)) if m.average else '–'}</td>" for m in columns
    )
    mean_cells += "<td></td>"
    rows.append(f"<tr class='mean'><th>mean</th>{mean_cells}</tr>")
    return (
        f"<h2>{html.escape(name)}</h2>\n<table>\n<tr><th>head</th>{header}<th>pattern</th></tr>\n"
        + "\n".join(rows)
        + "\n</table>"
    )


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


def _pooling_note(name: str, pooling: Pooling, heads: int) -> str:
    """The visible sentence that says a layer is not shown exactly, and where the exact is."""
    (q0, q1), (k0, k1) = pooling.query, pooling.key
    rows, cols = pooling.shape
    text = f"{name}: {q1 - q0}×{k1 - k0} positions"
    if pooling.windowed:
        text += f" (queries {q0}–{q1 - 1}, keys {k0}–{k1 - 1} of {pooling.source_len[0]}×"
        text += f"{pooling.source_len[1]})"
    if pooling.pooled:
        text += (
            f" shown {pooling.mode}-pooled to {rows}×{cols}: each cell is the {pooling.mode} "
            f"over a block of {pooling.query_block}×{pooling.key_block} positions (the last "
            "block may be partial)"
        )
        if pooling.mode == "max":
            text += ", so a single sharp position stays visible"
        text += f"; the mean view is the mean of the {heads} heads, then pooled"
    return html.escape(text + f". Exact values: {EXACT_VALUES_FILE}.")


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
    rollout: Any, items: list[int], tokens: Sequence[str] | None, layers: list[str]
) -> dict[str, Any] | None:
    """The rollout view: one matrix per batch item (or one for all), pooled like a head."""
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
    q, k = (int(n) for n in arr.shape[-2:])
    query_tokens, key_tokens = axis_tokens(tokens, q, k) if tokens else (None, None)
    blocks = (pooling.query_block, pooling.key_block) if pooling else (1, 1)
    rows, cols = pooling.shape if pooling else (q, k)
    exact = pooling is None
    return {
        "label": "rollout",
        "title": f"attention rollout through {', '.join(layers)}",
        "display_shape": [rows, cols],
        "pooling": None if pooling is None else _pooling_data(pooling),
        "note": "" if pooling is None else pooling.note(),
        "y": _axis_labels(query_tokens, q, (0, q), blocks[0], exact),
        "x": _axis_labels(key_tokens, k, (0, k), blocks[1], exact),
        "items": entries,
    }


def page_html(
    attention_by_layer: Mapping[str, Any],
    *,
    tokens: Sequence[str] | None,
    batch_index: int,
    analysis: Mapping[str, Any] | None,
    pooling: PoolingArg,
    rollout: Any = None,
    title: str = "Attention — neural-attn",
) -> str:
    """The page's text (``render.create_interactive_html`` documents the arguments)."""
    if not attention_by_layer:
        raise InvalidInputError("no attention layers to put on the page")
    metrics_by_layer = per_layer(analysis)
    if rollout is None and analysis is not None:
        rollout = analysis.get("rollout")
    given = {name: layer_pooling(pooling, name) for name in attention_by_layer}
    items = _page_items(attention_by_layer, batch_index, given)
    if batch_index not in items:  # the chosen item must exist even when all are shown
        name, first = next(iter(attention_by_layer.items()))
        batch_item(first, batch_index=batch_index, name=name)
    size = _page_size(attention_by_layer, given, len(items))
    layers: list[dict[str, Any]] = []
    tables: list[str] = []
    notes: list[str] = []
    if size < DISPLAY_SIZE:
        notes.append(
            f"<li>To keep the page under {PAGE_DATA_BYTES // 10**6} MB of attention, every head "
            f"is drawn with at most {size} positions an axis; draw fewer layers (--layer) for "
            "finer views.</li>"
        )
    for name, attention in attention_by_layer.items():
        server_pooling = given[name]
        layer, drawn = _layer_data(
            name,
            attention,
            items=items,
            tokens=tokens,
            given=server_pooling,
            size=size,
        )
        if drawn is not None and (drawn.pooled or drawn.windowed):
            notes.append(f"<li>{_pooling_note(name, drawn, layer['heads'])}</li>")
        metrics = metrics_by_layer.get(name)
        if metrics is None and server_pooling is None:
            metrics = analyze_attention_patterns(attention)
        layer["metrics"] = _head_metrics(metrics)
        layers.append(layer)
        tables.append(_metrics_table(name, metrics))

    data = {
        "batch_index": batch_index,
        "tokens": None if tokens is None else [str(t) for t in tokens],
        "encoding": ENCODING,
        "exact_values": EXACT_VALUES_FILE,
        "colormap": _colormap_hex(),
        "masked_color": MASKED_COLOR,
        "layers": layers,
        "rollout": _rollout_data(rollout, items, tokens, list(attention_by_layer)),
    }
    # "</script" or "<!--" in a token would end or confuse the script block; \u escapes read
    # back as the same JSON.
    data_json = (
        json.dumps(data, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    note = ""
    if notes:
        note = (
            '<div id="pooling-note" class="note"><p><strong>Pooled for display.</strong> '
            "Not every position is drawn:</p>\n<ul>\n" + "\n".join(notes) + "\n</ul></div>"
        )
    return _PAGE.format(
        title=html.escape(title),
        style=_asset("page.css"),
        plotlyjs=plotly_js(),
        notes=note,
        item_hidden="" if len(items) > 1 else " hidden",
        tables="\n".join(tables),
        data=data_json,
        script=_asset("page.js"),
    )


def write_page(
    attention_by_layer: Mapping[str, Any],
    *,
    output_path: str | Path,
    **options: Any,
) -> Path:
    """``render.create_interactive_html`` (documented there)."""
    text = page_html(attention_by_layer, **options)
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def iframe(page: str, *, height: int = 1100) -> str:
    """The page in an ``<iframe srcdoc>``: how a notebook shows it, its ids and script apart."""
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width: 100%; '
        f'height: {height}px; border: 0;" sandbox="allow-scripts"></iframe>'
    )


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
{style}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
<h1>{title}</h1>
<p>Rows are query positions, columns key positions; each row sums to 1 over the keys.
Choose a layer and a head, the mean of its heads or the rollout through all layers; click a
thumbnail of the overview to open that head, and a row of the heatmap to see that query.</p>
{notes}
<div id="controls">
<label{item_hidden}>batch item <select id="item-select"></select></label>
<label>layer <select id="layer-select"></select></label>
<label>view <select id="view-select"></select></label>
<label>query token <select id="query-select"></select></label>
</div>
<div id="main">
<div id="attention-plot"></div>
<aside id="head-panel"></aside>
</div>
<p id="view-status"></p>
<p id="masked-legend" hidden><span class="swatch"></span> masked: attention exactly 0 in
every head (padding or the causal upper triangle), not a small value.</p>
<div id="query-plot"></div>
<p id="query-status"></p>
<h2>Every head</h2>
<p class="hint">Each thumbnail is on its own colour scale (0 to its largest value); its pattern
label comes from the metrics. Click one to open it above.</p>
<div id="overview"></div>
<section id="metrics">
{tables}
</section>
<script type="application/json" id="attention-data">{data}</script>
<script type="text/javascript">{script}</script>
</body>
</html>
"""
