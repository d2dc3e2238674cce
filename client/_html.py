"""The offline attention page (``attention_interactive.html``): data binary, drawn by Plotly.

The page is one file: plotly.js inlined, a ``<script type="application/json"
id="attention-data">`` block, and a small script that decodes and draws the chosen view.

Encoding of the matrices: each drawn matrix (one head, or the mean of heads, of one batch
item) is the float16 little-endian bytes of its C-order ``(rows, cols)`` values, in base64
(``"encoding": "float16-le-base64"``). float16 keeps about 3 significant digits at every
magnitude (down to 6e-8), so small probabilities still read back, at 2 bytes a cell; the
page decodes them with a 65,536-entry table into plain arrays for Plotly. Above
``DISPLAY_SIZE`` positions each head is max-pooled (``render.pool_for_display``) and the page
says so, naming ``attention_weights.npz`` for the exact values; 4,096 tokens x 8 heads x
2 layers is then about 17 MB (4.6 MB of it plotly.js).

The page reads ``#layer=L&item=B&view=V`` (indices) from its address to open on a view, and
after each draw writes what it drew to ``#view-status`` (its ``data-*`` attributes hold the
shape, the sum, the max and where it is), which is also how the browser test checks it.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neural_attn.analysis import analyze_attention_patterns
from neural_attn.client import render
from neural_attn.errors import InvalidInputError

ENCODING = "float16-le-base64"
EXACT_VALUES_FILE = "attention_weights.npz"
# Batches up to this size put every item on the page (selectable)...
MAX_PAGE_ITEMS = 8
# ...while their data stays under this many bytes; otherwise only the chosen item.
MAX_ITEMS_BYTES = 16 * 2**20
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _encode(matrix: np.ndarray) -> str:
    """float16 little-endian bytes of the matrix, base64."""
    values = np.clip(matrix, 0.0, _FLOAT16_MAX).astype("<f2", copy=False)
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


def _metrics_table(name: str, metrics: Mapping[str, Any] | None) -> str:
    """One layer's per-head metrics as a plain HTML table."""
    if metrics is None:
        return (
            f"<h2>{html.escape(name)}</h2>\n<p class='note'>No metrics: this layer arrived "
            "pooled, and the metrics need the exact attention (they are in analysis.json).</p>"
        )
    columns = [
        ("entropy", "attention_entropy"),
        ("normalized entropy", "normalized_entropy"),
        ("max attention", "max_attention_per_head"),
        ("diagonal strength", "diagonal_attention_strength"),
        ("mean distance", "mean_attention_distance"),
    ]
    heads = int(metrics.get("num_heads", len(metrics.get("attention_entropy", []))))
    header = "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns)
    rows = []
    for h in range(heads):
        cells = "".join(
            f"<td>{_fmt((metrics.get(key) or [None] * heads)[h])}</td>" for _, key in columns
        )
        pattern = (metrics.get("pattern_per_head") or ["–"] * heads)[h]
        rows.append(f"<tr><th>head {h}</th>{cells}<td>{html.escape(str(pattern))}</td></tr>")
    averages = [metrics.get(k) for k in ("avg_entropy", "avg_max_attention")]
    mean_cells = (
        f"<td>{_fmt(averages[0])}</td><td>–</td><td>{_fmt(averages[1])}</td>"
        f"<td>{_fmt(metrics.get('avg_diagonal_strength'))}</td><td>–</td><td></td>"
    )
    rows.append(f"<tr class='mean'><th>mean</th>{mean_cells}</tr>")
    return (
        f"<h2>{html.escape(name)}</h2>\n<table>\n<tr><th>head</th>{header}<th>pattern</th></tr>\n"
        + "\n".join(rows)
        + "\n</table>"
    )


def _pooling_note(name: str, pooling: render._Pooling, heads: int) -> str:
    """The visible sentence that says a layer is not shown exactly, and where the exact is."""
    (q0, q1), (k0, k1) = pooling.query_range, pooling.key_range
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


def _display_shape(attention: Any, given: render._Pooling | None) -> tuple[int, int, int]:
    """(heads, rows, columns) of a layer as drawn, from its shape alone."""
    shape = np.shape(attention)
    heads = int(shape[-3]) if len(shape) >= 3 else 1
    if given is not None:
        return (heads, *given.shape)
    q, k = (int(n) for n in shape[-2:])
    size = render.DISPLAY_SIZE
    return heads, -(-q // render._blocks(q, size)), -(-k // render._blocks(k, size))


def _page_items(
    attention_by_layer: Mapping[str, Any], batch_index: int, pooling: Mapping[str, Any] | None
) -> list[int]:
    """Batch items to put on the page: all of a small batch if they fit, else the chosen."""
    first = next(iter(attention_by_layer.values()))
    batch = int(np.shape(first)[0]) if np.ndim(first) == 4 else 1
    per_item = 0
    for name, attention in attention_by_layer.items():
        heads, rows, cols = _display_shape(attention, render._given_pooling(pooling, name))
        per_item += (heads + 1) * rows * cols * 2
    if 1 < batch <= MAX_PAGE_ITEMS and batch * per_item <= MAX_ITEMS_BYTES:
        return list(range(batch))
    return [batch_index]


def _layer_data(
    name: str,
    attention: Any,
    *,
    items: list[int],
    tokens: Sequence[str] | None,
    given: render._Pooling | None,
) -> tuple[dict[str, Any], render._Pooling | None]:
    """One layer's entry of the page data, and how it was pooled (None: exact)."""
    views_by_item = []
    drawn: render._Pooling | None = None
    heads = rows = cols = 0
    for b in items:
        item = render._item(attention, batch_index=b, name=name, pooling=given)
        heads = item.shape[0]
        mean, drawn = render._mean_view(item, given)
        rows, cols = mean.shape
        matrices = [(f"mean of {heads} heads", mean)]
        matrices += [(f"head {h}", render._head_view(item, h, given)[0]) for h in range(heads)]
        prefix = f"item {b} — " if len(items) > 1 else ""
        views = [
            {"label": label, "title": f"{prefix}{name} — {label}", "data": _encode(matrix)}
            for label, matrix in matrices
        ]
        views_by_item.append({"index": b, "views": views})
    source = drawn.source_len if drawn is not None else (rows, cols)
    query_tokens, key_tokens = render._axis_tokens(tokens, *source)
    exact = drawn is None or not drawn.pooled
    spans = (drawn.query_range, drawn.key_range) if drawn else ((0, rows), (0, cols))
    blocks = (drawn.query_block, drawn.key_block) if drawn else (1, 1)
    layer = {
        "name": name,
        "shape": [int(n) for n in np.shape(attention)],
        "heads": heads,
        "display_shape": [int(rows), int(cols)],
        "pooling": None if drawn is None else drawn.as_dict(),
        "note": "" if drawn is None else drawn.note(),
        "y": _axis_labels(query_tokens, source[0], spans[0], blocks[0], exact),
        "x": _axis_labels(key_tokens, source[1], spans[1], blocks[1], exact),
        "items": views_by_item,
    }
    return layer, drawn


def write_page(
    attention_by_layer: Mapping[str, Any],
    *,
    tokens: Sequence[str] | None,
    batch_index: int,
    analysis: Mapping[str, Any] | None,
    output_path: str | Path,
    pooling: Mapping[str, Any] | None,
) -> Path:
    """``render.create_interactive_html`` (documented there)."""
    from plotly.offline import get_plotlyjs

    if not attention_by_layer:
        raise InvalidInputError("no attention layers to put on the page")
    given = render._per_layer(analysis)
    items = _page_items(attention_by_layer, batch_index, pooling)
    if batch_index not in items:  # the chosen item must exist even when all are shown
        name, first = next(iter(attention_by_layer.items()))
        render._item(first, batch_index=batch_index, name=name)
    layers: list[dict[str, Any]] = []
    tables: list[str] = []
    notes: list[str] = []
    for name, attention in attention_by_layer.items():
        server_pooling = render._given_pooling(pooling, name)
        layer, drawn = _layer_data(
            name,
            attention,
            items=items,
            tokens=tokens,
            given=server_pooling,
        )
        layers.append(layer)
        if drawn is not None and (drawn.pooled or drawn.windowed):
            notes.append(f"<li>{_pooling_note(name, drawn, layer['heads'])}</li>")
        metrics = given.get(name)
        if metrics is None and server_pooling is None:
            metrics = analyze_attention_patterns(attention)
        tables.append(_metrics_table(name, metrics))

    data = {
        "batch_index": batch_index,
        "tokens": None if tokens is None else [str(t) for t in tokens],
        "encoding": ENCODING,
        "exact_values": EXACT_VALUES_FILE,
        "layers": layers,
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
    page = _PAGE.format(
        title="Attention — neural-attn",
        plotlyjs=get_plotlyjs(),
        notes=note,
        item_hidden="" if len(items) > 1 else " hidden",
        tables="\n".join(tables),
        data=data_json,
        script=_SCRIPT,
    )
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; font-variant-numeric: tabular-nums; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }}
tr.mean {{ background: #f3f3f3; }}
.note {{ background: #fff8e1; border-left: 4px solid #e0a800; padding: 0.3rem 0.9rem; }}
#controls label {{ margin-right: 1.2rem; }}
#view-status {{ color: #555; }}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
<h1>{title}</h1>
<p>Choose a layer and a head (or the mean over heads) below.
Rows are query positions, columns key positions.</p>
{notes}
<div id="controls">
<label{item_hidden}>batch item <select id="item-select"></select></label>
<label>layer <select id="layer-select"></select></label>
<label>view <select id="view-select"></select></label>
</div>
<div id="attention-plot" style="height: 760px;"></div>
<p id="view-status"></p>
<section id="metrics">
{tables}
</section>
<script type="application/json" id="attention-data">{data}</script>
<script type="text/javascript">{script}</script>
</body>
</html>
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("attention-data").textContent);
  // float16 bits -> value, for every 16-bit pattern.
  var F16 = new Float32Array(65536);
  for (var bits = 0; bits < 65536; bits++) {
    var e = (bits >> 10) & 31, f = bits & 1023, sign = bits & 32768 ? -1 : 1;
    F16[bits] = sign * (e === 0 ? f * 5.960464477539063e-8
      : e === 31 ? (f ? NaN : Infinity) : (1 + f / 1024) * Math.pow(2, e - 15));
  }
  function decode(b64, rows, cols) {
    var bin = atob(b64), z = new Array(rows);
    for (var r = 0; r < rows; r++) {
      var row = new Array(cols), base = 2 * r * cols;
      for (var c = 0; c < cols; c++) {
        var i = base + 2 * c;
        row[c] = F16[bin.charCodeAt(i) | (bin.charCodeAt(i + 1) << 8)];
      }
      z[r] = row;
    }
    return z;
  }
  var itemSelect = document.getElementById("item-select");
  var layerSelect = document.getElementById("layer-select");
  var viewSelect = document.getElementById("view-select");
  var plot = document.getElementById("attention-plot");
  var status = document.getElementById("view-status");
  function option(select, value, text) {
    var o = document.createElement("option");
    o.value = String(value);
    o.textContent = text;
    select.appendChild(o);
  }
  function entry(layer) {
    var wanted = Number(itemSelect.value);
    for (var i = 0; i < layer.items.length; i++) {
      if (layer.items[i].index === wanted) { return layer.items[i]; }
    }
    return layer.items[0];
  }
  function fillViews(keep) {
    var views = entry(data.layers[Number(layerSelect.value)]).views;
    var previous = Number(viewSelect.value) || 0;
    viewSelect.innerHTML = "";
    views.forEach(function (v, i) { option(viewSelect, i, v.label); });
    viewSelect.value = String(keep && previous < views.length ? previous : 0);
  }
  function draw() {
    var layer = data.layers[Number(layerSelect.value)];
    var view = entry(layer).views[Number(viewSelect.value)];
    var rows = layer.display_shape[0], cols = layer.display_shape[1];
    var z = decode(view.data, rows, cols);
    var pool = layer.pooling;
    var pooled = pool && (pool.query_block > 1 || pool.key_block > 1);
    var value = pooled ? pool.mode + " attention" : "attention";
    var trace = {
      type: "heatmap", z: z, x: layer.x, y: layer.y, zmin: 0, colorscale: "Viridis",
      colorbar: {title: {text: value}},
      hovertemplate: "query: %{y}<br>key: %{x}<br>" + value + ": %{z:.4f}<extra></extra>"
    };
    var layout = {
      title: {text: view.title + (layer.note ? " (" + layer.note + ")" : ""),
              x: 0, xanchor: "left", xref: "paper"},
      height: 760, margin: {t: 60},
      xaxis: {title: {text: "key"}, side: "bottom", type: "category", automargin: true},
      yaxis: {title: {text: "query"}, autorange: "reversed", type: "category", automargin: true}
    };
    var sum = 0, max = -Infinity, at = "0,0";
    for (var r = 0; r < rows; r++) {
      for (var c = 0; c < cols; c++) {
        var v = z[r][c];
        sum += v;
        if (v > max) { max = v; at = r + "," + c; }
      }
    }
    status.removeAttribute("data-drawn");
    Plotly.react(plot, [trace], layout, {displaylogo: false, responsive: true}).then(function () {
      status.textContent = "Showing " + view.title + ": " + rows + "×" + cols + " cells" +
        (pooled ? ", each the " + pool.mode + " over a block of " + pool.query_block + "×" +
         pool.key_block + " positions (exact values: " + data.exact_values + ")" : "") + ".";
      status.setAttribute("data-title", view.title);
      status.setAttribute("data-shape", rows + "x" + cols);
      status.setAttribute("data-sum", String(sum));
      status.setAttribute("data-max", String(max));
      status.setAttribute("data-argmax", at);
      status.setAttribute("data-drawn", "1");
    });
  }
  data.layers[0].items.forEach(function (it) { option(itemSelect, it.index, "item " + it.index); });
  data.layers.forEach(function (layer, i) { option(layerSelect, i, layer.name); });
  var wanted = new URLSearchParams(location.hash.slice(1));
  itemSelect.value = String(wanted.has("item") ? wanted.get("item") : data.batch_index);
  if (itemSelect.selectedIndex < 0) { itemSelect.selectedIndex = 0; }
  layerSelect.value = wanted.get("layer") || "0";
  if (layerSelect.selectedIndex < 0) { layerSelect.selectedIndex = 0; }
  fillViews(false);
  viewSelect.value = wanted.get("view") || "0";
  if (viewSelect.selectedIndex < 0) { viewSelect.selectedIndex = 0; }
  itemSelect.addEventListener("change", function () { fillViews(true); draw(); });
  layerSelect.addEventListener("change", function () { fillViews(true); draw(); });
  viewSelect.addEventListener("change", draw);
  draw();
})();
"""
