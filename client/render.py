"""Pictures and text of extracted attention: heatmap and head-grid PNGs, an offline HTML page,
and the console summary (DESIGN §5).

matplotlib is driven through ``Figure`` objects on an Agg canvas, never pyplot, so a long-lived
process (the CLI's embedded server, a notebook) accumulates no global figure state and needs no
display. matplotlib and plotly are imported inside the functions that use them, so importing the
client stays fast.

Attention arrives as ``[batch, head, query_pos, key_pos]``; ``(heads, q, k)`` is taken as one
batch item and ``(q, k)`` as one head.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neural_attn.analysis import analyze_attention_patterns
from neural_attn.errors import InvalidInputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = [
    "create_interactive_html",
    "format_console_summary",
    "plot_attention_heads",
    "plot_heatmaps",
]

PNG_DPI = 100
# Past this many positions an axis shows every k-th token so the labels stay readable.
MAX_TICK_LABELS = 40
HTML_DECIMALS = 4
# Batches up to this size put every item on the page (selectable); larger ones only the chosen.
MAX_PAGE_ITEMS = 8
_COLORMAP = "viridis"


# --- shared helpers -------------------------------------------------------------------------


def _item(attention: Any, *, batch_index: int, name: str = "attention") -> np.ndarray:
    """One batch item as a float ``(heads, q, k)`` array."""
    arr = np.asarray(attention, dtype=np.float64)
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
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise InvalidInputError(
            f"{name} of shape {tuple(arr.shape)} is empty or holds NaN/inf; nothing to draw"
        )
    return arr


def _select_head(item: np.ndarray, head: int | None, *, name: str) -> tuple[np.ndarray, str]:
    """The matrix to draw and its title: one head, or the mean of all heads."""
    heads = item.shape[0]
    if head is None:
        return item.mean(axis=0), f"{name} — mean of {heads} head{'s' * (heads != 1)}"
    if not 0 <= head < heads:
        raise InvalidInputError(f"head {head} does not exist in {name}; use 0..{heads - 1}")
    return item[head], f"{name} — head {head}"


def _axis_tokens(
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


def _tick_step(n: int) -> int:
    return max(1, math.ceil(n / MAX_TICK_LABELS))


def _per_layer(analysis: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Accept ``{layer: metrics}`` or the ``analysis.json`` shape ``{"layers": {...}, ...}``."""
    if analysis is None:
        return {}
    layers = analysis.get("layers")
    if isinstance(layers, Mapping) and set(analysis) <= {"layers", "rollout"}:
        return layers
    return analysis


# --- matplotlib -----------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _draw(
    ax: Axes,
    matrix: np.ndarray,
    *,
    query_tokens: list[str] | None,
    key_tokens: list[str] | None,
    vmax: float | None = None,
) -> AxesImage:
    image = ax.imshow(
        matrix, cmap=_COLORMAP, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    q, k = matrix.shape
    if key_tokens is not None:
        ticks = range(0, k, _tick_step(k))
        ax.set_xticks(list(ticks), [key_tokens[i] for i in ticks], rotation=90, fontsize=8)
    if query_tokens is not None:
        ticks = range(0, q, _tick_step(q))
        ax.set_yticks(list(ticks), [query_tokens[i] for i in ticks], fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    return image


def _save(fig: Figure, output_path: str | Path | None) -> None:
    if output_path is None:
        return
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PNG_DPI)


def plot_heatmaps(
    attention_by_layer: Mapping[str, Any],
    *,
    head: int | None = None,
    tokens: Sequence[str] | None = None,
    batch_index: int = 0,
    output_path: str | Path | None = None,
) -> Figure:
    """One heatmap panel per layer (``attention_heatmap.png``).

    Args:
        head: draw this head of every layer; ``None`` draws the mean over heads.
        tokens: labels for the query and key axes (every k-th one past 40 positions).
        batch_index: which batch item to draw.
        output_path: where to write the PNG; nothing is written when ``None``.
    """
    if not attention_by_layer:
        raise InvalidInputError("no attention layers to plot")
    n = len(attention_by_layer)
    ncols = n if n <= 3 else math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig = _new_figure(5.2 * ncols, 4.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, attention) in zip(axes, attention_by_layer.items(), strict=False):
        item = _item(attention, batch_index=batch_index, name=name)
        matrix, title = _select_head(item, head, name=name)
        query_tokens, key_tokens = _axis_tokens(tokens, *matrix.shape)
        image = _draw(ax, matrix, query_tokens=query_tokens, key_tokens=key_tokens)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.85)
    for ax in axes[n:]:
        ax.remove()
    _save(fig, output_path)
    return fig


def plot_attention_heads(
    attention: Any,
    *,
    tokens: Sequence[str] | None = None,
    title: str | None = None,
    batch_index: int = 0,
    output_path: str | Path | None = None,
) -> Figure:
    """A grid of every head of one layer (``attention_heads_{layer}.png``), 4 per row.

    ``attention`` is ``(heads, q, k)``, or ``(batch, heads, q, k)`` with ``batch_index``
    picking the item. All heads share one color scale so they can be compared.
    """
    item = _item(attention, batch_index=batch_index)
    heads, q, k = item.shape
    ncols = min(4, heads)
    nrows = math.ceil(heads / ncols)
    fig = _new_figure(3.6 * ncols + 1.0, 3.4 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    query_tokens, key_tokens = _axis_tokens(tokens, q, k)
    vmax = float(item.max()) or 1.0
    image = None
    for h in range(heads):
        image = _draw(axes[h], item[h], query_tokens=query_tokens, key_tokens=key_tokens, vmax=vmax)
        axes[h].set_title(f"head {h}", fontsize=10)
    for ax in axes[heads:]:
        ax.remove()
    assert image is not None
    fig.colorbar(image, ax=list(axes[:heads]), shrink=0.8)
    fig.suptitle(title or f"{heads} attention head{'s' * (heads != 1)}")
    _save(fig, output_path)
    return fig


# --- plotly ---------------------------------------------------------------------------------


def _unique_labels(tokens: list[str] | None, n: int) -> list[str] | list[int]:
    """Axis categories; a repeated token gets its position so plotly keeps the cells apart."""
    if tokens is None:
        return list(range(n))
    counts: dict[str, int] = {}
    for token in tokens:
        counts[token] = counts.get(token, 0) + 1
    return [t if counts[t] == 1 else f"{t} ({i})" for i, t in enumerate(tokens)]


def _rounded(matrix: np.ndarray) -> list[Any]:
    return np.round(matrix, HTML_DECIMALS).tolist()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


def _metrics_table(name: str, metrics: Mapping[str, Any]) -> str:
    """One layer's per-head metrics as a plain HTML table."""
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
</style>
</head>
<body>
<h1>{title}</h1>
<p>Choose a layer and head (or the mean over heads) from the menu at the top right of the plot.
Rows are query positions, columns key positions.</p>
{plot}
<section id="metrics">
{tables}
</section>
<script type="application/json" id="attention-data">{data}</script>
</body>
</html>
"""


def create_interactive_html(
    attention_by_layer: Mapping[str, Any],
    *,
    tokens: Sequence[str] | None = None,
    batch_index: int = 0,
    analysis: Mapping[str, Any] | None = None,
    output_path: str | Path = "attention_interactive.html",
) -> Path:
    """Write ``attention_interactive.html``: a self-contained page that works offline.

    One heatmap per (layer, mean or head), shown one at a time from a dropdown; values are
    rounded to 4 decimals. The metrics table comes from ``analysis`` (``{layer: metrics}`` or
    the ``analysis.json`` content) and is computed here when that is ``None``. The drawn data
    is also embedded as JSON in ``<script id="attention-data">`` for reading back.
    """
    import plotly.graph_objects as go

    if not attention_by_layer:
        raise InvalidInputError("no attention layers to put on the page")
    given = _per_layer(analysis)
    traces: list[Any] = []
    labels: list[str] = []
    data_layers: list[dict[str, Any]] = []
    tables: list[str] = []
    first_visible: int | None = None
    for name, attention in attention_by_layer.items():
        item = _item(attention, batch_index=batch_index, name=name)
        heads, q, k = item.shape
        query_tokens, key_tokens = _axis_tokens(tokens, q, k)
        x, y = _unique_labels(key_tokens, k), _unique_labels(query_tokens, q)
        mean = item.mean(axis=0)
        # Small batches carry every item so the page can switch between them.
        batch = int(np.shape(attention)[0]) if np.ndim(attention) == 4 else 1
        items = list(range(batch)) if 1 < batch <= MAX_PAGE_ITEMS else [batch_index]
        for b in items:
            drawn = item if b == batch_index else _item(attention, batch_index=b, name=name)
            prefix = f"item {b} — " if len(items) > 1 else ""
            views = [(f"mean of {heads} heads", drawn.mean(axis=0))]
            views += [(f"head {h}", drawn[h]) for h in range(heads)]
            if b == batch_index and first_visible is None:
                first_visible = len(traces)
            for view, matrix in views:
                traces.append(
                    go.Heatmap(
                        z=np.round(matrix, HTML_DECIMALS).astype(np.float32),
                        x=x,
                        y=y,
                        zmin=0.0,
                        colorscale="Viridis",
                        colorbar={"title": {"text": "attention"}},
                        hovertemplate=(
                            "query: %{y}<br>key: %{x}<br>attention: %{z:.4f}<extra></extra>"
                        ),
                        name=f"{prefix}{name} — {view}",
                        visible=False,
                    )
                )
                labels.append(f"{prefix}{name} — {view}")
        data_layers.append(
            {
                "name": name,
                "shape": [int(n) for n in np.shape(attention)],
                "mean": _rounded(mean),
                "heads": [_rounded(item[h]) for h in range(heads)],
            }
        )
        metrics = given.get(name) or analyze_attention_patterns(attention)
        tables.append(_metrics_table(name, metrics))

    buttons = [
        {
            "label": label,
            "method": "update",
            "args": [{"visible": [i == t for i in range(len(traces))]}, {"title.text": label}],
        }
        for t, label in enumerate(labels)
    ]
    assert first_visible is not None
    traces[first_visible].visible = True
    fig = go.Figure(data=traces)
    fig.update_layout(
        title={"text": labels[first_visible], "x": 0.0, "xanchor": "left", "xref": "paper"},
        height=760,
        xaxis={"title": {"text": "key"}, "side": "bottom"},
        yaxis={"title": {"text": "query"}, "autorange": "reversed"},
        updatemenus=[
            {
                "buttons": buttons,
                "active": first_visible,  # the dropdown opens on the chosen item
                "direction": "down",
                "showactive": True,
                "x": 1.0,
                "xanchor": "right",
                "y": 1.12,
                "yanchor": "top",
            }
        ],
        margin={"t": 110},
    )
    plot = fig.to_html(
        full_html=False,
        include_plotlyjs=True,
        div_id="attention-plot",
        config={"displaylogo": False, "responsive": True},
    )
    data = {
        "batch_index": batch_index,
        "tokens": None if tokens is None else [str(t) for t in tokens],
        "decimals": HTML_DECIMALS,
        "layers": data_layers,
    }
    # "</script" or "<!--" in a token would end or confuse the script block; \u escapes read
    # back as the same JSON.
    data_json = (
        json.dumps(data, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    page = _PAGE.format(
        title="Attention — neural-attn", plot=plot, tables="\n".join(tables), data=data_json
    )
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# --- console --------------------------------------------------------------------------------


def format_console_summary(
    attention_by_layer: Mapping[str, Any], analysis_by_layer: Mapping[str, Any]
) -> str:
    """The console report: layer count, each shape, and a per-head metrics table.

    ``analysis_by_layer`` is ``{layer: metrics}`` (or the ``analysis.json`` content); a layer
    missing from it is analysed here.
    """
    given = _per_layer(analysis_by_layer)
    n = len(attention_by_layer)
    lines = [f"Found {n} attention layer{'s' * (n != 1)}"]
    header = f"  {'head':>5}  {'entropy':>8}  {'max attn':>8}  {'diagonal':>8}  pattern"
    for name, attention in attention_by_layer.items():
        shape = tuple(int(d) for d in np.shape(attention))
        metrics = given.get(name) or analyze_attention_patterns(attention)
        heads = int(metrics["num_heads"])
        patterns = metrics.get("pattern_per_head") or [""] * heads
        lines += ["", f"{name}: shape {shape}", header]
        for h in range(heads):
            lines.append(
                f"  {h:>5}  {metrics['attention_entropy'][h]:>8.4f}"
                f"  {metrics['max_attention_per_head'][h]:>8.4f}"
                f"  {metrics['diagonal_attention_strength'][h]:>8.4f}  {patterns[h]}"
            )
        lines.append(
            f"  {'mean':>5}  {metrics['avg_entropy']:>8.4f}  {metrics['avg_max_attention']:>8.4f}"
            f"  {metrics['avg_diagonal_strength']:>8.4f}"
        )
    return "\n".join(lines)
