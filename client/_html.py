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
``pooling`` in the data is its ``Pooling`` (``_page_data._pooling_data``).

The page reads ``#layer=L&item=B&view=V&query=Q`` (indices; ``view`` 0 is the mean, 1..H the
heads, H+1 the rollout) from its address to open on a view. After each draw it writes what it
drew as ``data-*`` attributes: ``#view-status`` (title, shape, sum, max and where it is),
``#query-status`` (the query and its row) and ``#overview`` (how many thumbnails were
drawn), which is also how the browser tests check it.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neural_attn.analysis import analyze_attention_patterns
from neural_attn.client._page_data import (
    ENCODING,
    EXACT_VALUES_FILE,
    _colormap_hex,
    _head_count,
    _layer_data,
    _page_items,
    _page_metrics,
    _page_size,
    _rollout_data,
)
from neural_attn.client._page_data import PAGE_DATA_BYTES as PAGE_DATA_BYTES
from neural_attn.client._page_data import _head_metrics as _head_metrics
from neural_attn.client._views import (
    DISPLAY_SIZE,
    MASKED_COLOR,
    PoolingArg,
    batch_item,
    layer_pooling,
    per_layer,
)
from neural_attn.errors import InvalidInputError
from neural_attn.pooling import Pooling

ASSETS = Path(__file__).resolve().parent / "assets"
PLOTLY_BUNDLE = "plotly-cartesian.min.js"


@functools.cache
def plotly_js() -> str:
    """The plotly.js bundle the page inlines (the vendored partial bundle)."""
    return (ASSETS / PLOTLY_BUNDLE).read_text(encoding="utf-8")


@functools.cache
def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


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


def _layers(
    attention_by_layer: Mapping[str, Any],
    metrics_by_layer: Mapping[str, Any],
    given: Mapping[str, Pooling | None],
    *,
    items: list[int],
    tokens: Sequence[str] | None,
    size: int,
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Each layer's page data, its metrics table and (when not drawn exactly) its note."""
    layers: list[dict[str, Any]] = []
    tables: list[str] = []
    notes: list[str] = []
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
    return layers, tables, notes


def _script_json(data: Mapping[str, Any]) -> str:
    """`data` as JSON safe inside the page's script block."""
    # "</script" or "<!--" in a token would end or confuse the script block; \u escapes read
    # back as the same JSON.
    return (
        json.dumps(data, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


def _notes_html(notes: Sequence[str]) -> str:
    """The box that lists what is not drawn exactly ("" when everything is)."""
    if not notes:
        return ""
    return (
        '<div id="pooling-note" class="note"><p><strong>Pooled for display.</strong> '
        "Not every position is drawn:</p>\n<ul>\n" + "\n".join(notes) + "\n</ul></div>"
    )


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
    notes: list[str] = []
    if size < DISPLAY_SIZE:
        notes.append(
            f"<li>To keep the page under {PAGE_DATA_BYTES // 10**6} MB of attention, every head "
            f"is drawn with at most {size} positions an axis; draw fewer layers (--layer) for "
            "finer views.</li>"
        )
    layers, tables, layer_notes = _layers(
        attention_by_layer, metrics_by_layer, given, items=items, tokens=tokens, size=size
    )
    data = {
        "batch_index": batch_index,
        "tokens": None if tokens is None else [str(t) for t in tokens],
        "encoding": ENCODING,
        "exact_values": EXACT_VALUES_FILE,
        "colormap": _colormap_hex(),
        "masked_color": MASKED_COLOR,
        "layers": layers,
        "rollout": _rollout_data(
            rollout,
            items,
            tokens,
            list(attention_by_layer),
            pooled=None if analysis is None else analysis.get("rollout_pooling"),
        ),
    }
    return _PAGE.format(
        title=html.escape(title),
        style=_asset("page.css"),
        plotlyjs=plotly_js(),
        notes=_notes_html([*notes, *layer_notes]),
        item_hidden="" if len(items) > 1 else " hidden",
        tables="\n".join(tables),
        data=_script_json(data),
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
