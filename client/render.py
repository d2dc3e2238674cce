"""Pictures and text of extracted attention: heatmap and head-grid PNGs, an offline HTML page,
and the console summary.

matplotlib is driven through ``Figure`` objects on an Agg canvas, never pyplot, so a long-lived
process (the CLI's embedded server, a notebook) accumulates no global figure state and needs no
display. matplotlib is imported inside the functions that use it, so importing the
client stays fast.

Attention arrives as ``[batch, head, query_pos, key_pos]``; ``(heads, q, k)`` is taken as one
batch item and ``(q, k)`` as one head.

Long sequences: above ``DISPLAY_SIZE`` positions on an axis, figures and the page draw each
head max-pooled (``pool_for_display``), so one sharp position stays visible, and say so; the
exact values are in ``attention_weights.npz``. Data the server already pooled comes with a
``pooling=`` description, a ``neural_attn.pooling.Pooling`` (or, from a caller, a dict:
``pool_for_display``'s ``info``, or the chunk's ``Reduction`` as a dict with ``query_block``,
``key_block``, ``mode``, ``source_shape`` and optionally the window ``query_start/stop``,
``key_start/stop``), and is drawn as it is. ``_views`` holds what figures and page share;
the page holds each drawn matrix as base64 float16, not JSON numbers (``_html.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neural_attn import analysis
from neural_attn.analysis import analyze_attention_patterns
from neural_attn.client._html import write_page
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
    one_pooling,
    per_layer,
)
from neural_attn.errors import InvalidInputError
from neural_attn.pooling import POOL_MODES, Pooling, pool

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = [
    "DISPLAY_SIZE",
    "create_interactive_html",
    "format_console_summary",
    "plot_attention_heads",
    "plot_heatmaps",
    "pool_for_display",
]

PNG_DPI = 100
# Past this many positions an axis shows every k-th token so the labels stay readable; the
# smaller panels of a head grid take fewer.
MAX_TICK_LABELS = 40
GRID_TICK_LABELS = 24
_COLORMAP = "viridis"


def pool_for_display(
    matrix_or_array: Any, size: int = DISPLAY_SIZE, mode: str = "max"
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Pool the last two axes to at most ``size`` positions each, for drawing.

    The block is ``ceil(length / size)`` positions per axis and the last block may be partial;
    each cell is the max (or the mean) over the positions its block covers. This is the
    server's pooling too (``neural_attn.pooling``). Returns ``(pooled, info)``: max keeps the
    input's dtype, mean is float64; ``info`` is ``{"query_block", "key_block", "mode",
    "source_len": (q, k)}``, or ``None`` (and the input unchanged) when both axes already fit.
    """
    arr = np.asarray(matrix_or_array)
    if arr.ndim < 2 or arr.size == 0:
        raise InvalidInputError(
            f"pool_for_display needs at least a (query_len, key_len) array; got shape "
            f"{tuple(arr.shape)}"
        )
    if mode not in POOL_MODES:
        raise InvalidInputError(f"pooling mode {mode!r} is not one of {', '.join(POOL_MODES)}")
    if size < 1:
        raise InvalidInputError(f"display size {size} must be at least 1")
    pooling = display_pooling(arr.shape, size, mode)
    if pooling is None:
        return arr, None
    info = {
        "query_block": pooling.query_block,
        "key_block": pooling.key_block,
        "mode": mode,
        "source_len": pooling.source_len,
    }
    return pool(arr, pooling.query_block, pooling.key_block, mode), info


# --- figures --------------------------------------------------------------------------------


def _select_head(
    item: np.ndarray, head: int | None, *, name: str, given: Pooling | None = None
) -> tuple[np.ndarray, str, Pooling | None]:
    """The matrix to draw, its title and how it was pooled: one head, or the mean of all."""
    heads = item.shape[0]
    if head is None:
        matrix, pooling = mean_view(item, given)
        what = f"mean of {heads} head{'s' * (heads != 1)}"
        if given is not None and given.pooled:
            what = f"mean of {heads} pooled head{'s' * (heads != 1)}"
    else:
        if not 0 <= head < heads:
            raise InvalidInputError(f"head {head} does not exist in {name}; use 0..{heads - 1}")
        matrix, pooling = head_view(item, head, given)
        what = f"head {head}"
    note = pooling.note() if pooling is not None else ""
    return matrix, f"{name} — {what}" + (f"\n{note}" if note else ""), pooling


def _tick_step(n: int, max_labels: int = MAX_TICK_LABELS) -> int:
    """Label every k-th position so that at most ``max_labels`` labels show."""
    return max(1, math.ceil(n / max_labels))


# --- matplotlib -----------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from neural_attn.client._figures import attention_figure_class

    fig = attention_figure_class()(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colormap() -> Any:
    """The heatmap colours; masked cells are transparent so the hatched background shows."""
    import matplotlib

    return matplotlib.colormaps[_COLORMAP].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))


def _draw(
    ax: Axes,
    matrix: np.ndarray,
    *,
    query_tokens: list[str] | None,
    key_tokens: list[str] | None,
    vmax: float | None = None,
    pooling: Pooling | None = None,
    mask: np.ndarray | None = None,
    max_labels: int = MAX_TICK_LABELS,
) -> AxesImage:
    """Draw ``matrix``; a pooled one is laid out in source positions, one cell per block.

    ``mask`` cells are left out of the colour scale and show a grey hatch instead.
    """
    if mask is not None:
        matrix = np.ma.masked_array(matrix, mask=mask)
        ax.set_facecolor(MASKED_COLOR)
        ax.patch.set_hatch("////")
        ax.patch.set_edgecolor("#a8a8a8")
    cmap = _colormap()
    if pooling is None:
        image = ax.imshow(
            matrix, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest"
        )
        (q0, q1), (k0, k1) = (0, matrix.shape[0]), (0, matrix.shape[1])
    else:
        (q0, q1), (k0, k1) = pooling.query, pooling.key
        rows, cols = matrix.shape
        image = ax.imshow(
            matrix,
            cmap=cmap,
            vmin=0.0,
            vmax=vmax,
            aspect="auto",
            interpolation="nearest",
            extent=(
                k0 - 0.5,
                k0 + cols * pooling.key_block - 0.5,
                q0 + rows * pooling.query_block - 0.5,
                q0 - 0.5,
            ),
        )
        # The last block may be partial: show the source positions only.
        ax.set_xlim(k0 - 0.5, k1 - 0.5)
        ax.set_ylim(q1 - 0.5, q0 - 0.5)
    if key_tokens is not None:
        ticks = range(k0, k1, _tick_step(k1 - k0, max_labels))
        ax.set_xticks(list(ticks), [key_tokens[i] for i in ticks], rotation=90, fontsize=8)
    if query_tokens is not None:
        ticks = range(q0, q1, _tick_step(q1 - q0, max_labels))
        ax.set_yticks(list(ticks), [query_tokens[i] for i in ticks], fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    return image


def _source_len(item: np.ndarray, pooling: Pooling | None) -> tuple[int, int]:
    """The (q, k) the tokens label: the layer's, before any window or pooling."""
    if pooling is None:
        return int(item.shape[-2]), int(item.shape[-1])
    return pooling.source_len


def _save(fig: Figure, output_path: str | Path | None, dpi: int) -> None:
    """Write the figure; the format follows the suffix (.png, .svg, .pdf)."""
    if output_path is None:
        return
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


def plot_heatmaps(
    attention_by_layer: Mapping[str, Any],
    *,
    head: int | None = None,
    tokens: Sequence[str] | None = None,
    batch_index: int = 0,
    output_path: str | Path | None = None,
    pooling: PoolingArg = None,
    dpi: int = PNG_DPI,
) -> Figure:
    """One heatmap panel per layer (``attention_heatmap.png``), all on one colour scale.

    Args:
        head: draw this head of every layer; ``None`` draws the mean over heads.
        tokens: labels for the query and key axes (every k-th one past 40 positions).
        batch_index: which batch item to draw.
        output_path: where to write the figure (.png, .svg or .pdf); nothing is written
            when ``None``.
        pooling: the attention was already pooled (on the server): one description for
            every layer or ``{layer: description}`` (see the module docstring). Otherwise
            axes longer than ``DISPLAY_SIZE`` are max-pooled here, and the titles say so.
        dpi: dots per inch of the PNG (and of the heatmap images inside SVG and PDF).

    Cells that are exactly 0 (masked keys) are hatched grey, not drawn as zero.
    """
    if not attention_by_layer:
        raise InvalidInputError("no attention layers to plot")
    n = len(attention_by_layer)
    ncols = n if n <= 3 else math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig = _new_figure(5.2 * ncols + 0.8, 4.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    panels = []
    for name, attention in attention_by_layer.items():
        given = layer_pooling(pooling, name)
        item = batch_item(attention, batch_index=batch_index, name=name, pooling=given)
        panels.append(_select_head(item, head, name=name, given=given))
    # One scale for the whole figure, so panels compare by colour.
    vmax = max(float(matrix.max()) for matrix, _, _ in panels) or 1.0
    image = None
    for ax, (matrix, title, drawn_pooling) in zip(axes, panels, strict=False):
        query_tokens, key_tokens = axis_tokens(tokens, *_source_len(matrix, drawn_pooling))
        image = _draw(
            ax,
            matrix,
            query_tokens=query_tokens,
            key_tokens=key_tokens,
            vmax=vmax,
            pooling=drawn_pooling,
            mask=masked_cells([matrix]),
        )
        image.set_gid(f"heatmap-{len(ax.figure.axes) - 1}")  # named in SVG output
        ax.set_title(title, fontsize=10)
    for ax in axes[n:]:
        ax.remove()
    assert image is not None
    fig.colorbar(image, ax=list(axes[:n]), shrink=0.85, label="attention")
    _save(fig, output_path, dpi)
    return fig


def plot_attention_heads(
    attention: Any,
    *,
    tokens: Sequence[str] | None = None,
    title: str | None = None,
    batch_index: int = 0,
    output_path: str | Path | None = None,
    pooling: PoolingArg = None,
    dpi: int = PNG_DPI,
    labels: Sequence[str] | None = None,
) -> Figure:
    """A grid of every head of one layer (``attention_heads_{layer}.png``), 4 per row.

    ``attention`` is ``(heads, q, k)``, or ``(batch, heads, q, k)`` with ``batch_index``
    picking the item. All heads share one color scale so they can be compared. Heads longer
    than ``DISPLAY_SIZE`` are max-pooled one at a time; ``pooling`` describes data that was
    pooled already (see the module docstring). The title says how it was pooled. ``labels``
    (one per head, e.g. the pattern labels) are added to the panel titles. Cells that are
    exactly 0 in every head (masked keys) are hatched grey, not drawn as zero.
    """
    given = one_pooling(pooling)
    item = batch_item(attention, batch_index=batch_index, pooling=given)
    heads = item.shape[0]
    views = [head_view(item, h, given) for h in range(heads)]
    drawn_pooling = views[0][1]
    ncols = min(4, heads)
    nrows = math.ceil(heads / ncols)
    fig = _new_figure(3.6 * ncols + 1.0, 3.4 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    query_tokens, key_tokens = axis_tokens(tokens, *_source_len(item, drawn_pooling))
    # Max-pooling keeps the largest value, so the shared scale is the exact one.
    vmax = max(float(matrix.max()) for matrix, _ in views) or 1.0
    mask = masked_cells([matrix for matrix, _ in views])
    image = None
    for h, (matrix, _) in enumerate(views):
        image = _draw(
            axes[h],
            matrix,
            query_tokens=query_tokens,
            key_tokens=key_tokens,
            vmax=vmax,
            pooling=drawn_pooling,
            mask=mask,
            max_labels=GRID_TICK_LABELS,
        )
        image.set_gid(f"heatmap-head-{h}")  # named in SVG output, for editing and tests
        label = f" — {labels[h]}" if labels is not None and h < len(labels) else ""
        axes[h].set_title(f"head {h}{label}", fontsize=10)
    for ax in axes[heads:]:
        ax.remove()
    assert image is not None
    fig.colorbar(image, ax=list(axes[:heads]), shrink=0.8)
    suptitle = title or f"{heads} attention head{'s' * (heads != 1)}"
    if drawn_pooling is not None and drawn_pooling.note():
        suptitle += f" — {drawn_pooling.note()}"
    fig.suptitle(suptitle)
    _save(fig, output_path, dpi)
    return fig


# --- the page -------------------------------------------------------------------------------


def create_interactive_html(
    attention_by_layer: Mapping[str, Any],
    *,
    tokens: Sequence[str] | None = None,
    batch_index: int = 0,
    analysis: Mapping[str, Any] | None = None,
    output_path: str | Path = "attention_interactive.html",
    pooling: PoolingArg = None,
    rollout: Any = None,
) -> Path:
    """Write ``attention_interactive.html``: a self-contained page that works offline.

    An overview of every head (thumbnails with pattern labels; click one to open it), and
    layer, head, the mean of heads or the rollout, query token and, for small batches, batch
    item chosen from menus; heads above ``DISPLAY_SIZE`` positions are shown max-pooled with a
    note saying so. The data is binary in the page (see ``neural_attn.client._html``). The
    metrics come from ``analysis`` (``{layer: metrics}`` or the ``analysis.json`` content,
    whose "rollout" is drawn too) and are computed here when that is ``None`` (not for data
    ``pooling`` says was pooled). ``rollout`` is ``(q, k)`` or ``(batch, q, k)``.
    """
    return write_page(
        attention_by_layer,
        tokens=tokens,
        batch_index=batch_index,
        analysis=analysis,
        output_path=output_path,
        pooling=pooling,
        rollout=rollout,
    )


# --- console --------------------------------------------------------------------------------


def format_console_summary(
    attention_by_layer: Mapping[str, Any], analysis_by_layer: Mapping[str, Any]
) -> str:
    """The console report: layer count, each shape, and a per-head metrics table.

    ``analysis_by_layer`` is ``{layer: metrics}`` (or the ``analysis.json`` content); a layer
    missing from it is analysed here.
    """
    given = per_layer(analysis_by_layer)
    n = len(attention_by_layer)
    lines = [f"Found {n} attention layer{'s' * (n != 1)}"]
    numbers = [m for m in analysis.METRICS if m.console and not m.is_label]
    labels = [m for m in analysis.METRICS if m.console and m.is_label]
    header = f"  {'head':>5}" + "".join(f"  {m.console:>8}" for m in numbers)
    header += "".join(f"  {m.console}" for m in labels)
    for name, attention in attention_by_layer.items():
        shape = tuple(int(d) for d in np.shape(attention))
        metrics: Mapping[str, Any] = given.get(name) or analyze_attention_patterns(attention)
        heads = int(metrics["num_heads"])
        lines += ["", f"{name}: shape {shape}", header]
        for h in range(heads):
            lines.append(
                f"  {h:>5}"
                + "".join(f"  {metrics[m.key][h]:>8.4f}" for m in numbers)
                + "".join(f"  {(metrics.get(m.key) or [''] * heads)[h]}" for m in labels)
            )
        lines.append(
            f"  {'mean':>5}"
            + "".join(
                f"  {metrics[m.average]:>8.4f}" if m.average else f"  {'':>8}" for m in numbers
            ).rstrip()
        )
    return "\n".join(lines)
