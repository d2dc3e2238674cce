"""Pictures and text of extracted attention: heatmap and head-grid PNGs, an offline HTML page,
and the console summary (DESIGN §5).

matplotlib is driven through ``Figure`` objects on an Agg canvas, never pyplot, so a long-lived
process (the CLI's embedded server, a notebook) accumulates no global figure state and needs no
display. matplotlib is imported inside the functions that use it, so importing the
client stays fast.

Attention arrives as ``[batch, head, query_pos, key_pos]``; ``(heads, q, k)`` is taken as one
batch item and ``(q, k)`` as one head.

Long sequences: above ``DISPLAY_SIZE`` positions on an axis, figures and the page draw each
head max-pooled (``pool_for_display``), so one sharp position stays visible, and say so; the
exact values are in ``attention_weights.npz``. Pooling happens per head (the head mean a block
of rows at a time), so no float64 copy of a layer is ever made. Data the server already pooled
comes with a ``pooling=`` description (``pool_for_display``'s ``info``, or the chunk's
``Reduction`` as a dict: ``query_block``, ``key_block``, ``mode``, ``source_shape`` and
optionally the window ``query_start/stop``, ``key_start/stop``) and is drawn as it is.
The page holds each drawn matrix as base64 float16, not JSON numbers (``_html.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
# Behind masked cells (exactly 0 in every head), hatched: never confused with a low value.
MASKED_COLOR = "#d9d9d9"
# Figures and the page show at most this many positions per axis; longer axes are pooled.
DISPLAY_SIZE = 512
POOL_MODES = ("max", "mean")
# float64 bytes of the rows summed at once for a pooled head mean.
_CHUNK_BYTES = 16 * 2**20
_COLORMAP = "viridis"


# --- pooling --------------------------------------------------------------------------------


def _blocks(length: int, size: int) -> int:
    """Positions per pooled cell: ceil(length / size), so at most ``size`` cells remain."""
    return max(1, -(-length // size))


def _reduce(arr: np.ndarray, query_block: int, key_block: int, mode: str) -> np.ndarray:
    """Pool the last two axes in blocks (the last one partial) by max or mean."""
    q, k = arr.shape[-2:]
    row_starts, col_starts = np.arange(0, q, query_block), np.arange(0, k, key_block)
    if mode == "max":
        out = arr if query_block == 1 else np.maximum.reduceat(arr, row_starts, axis=-2)
        return out if key_block == 1 else np.maximum.reduceat(out, col_starts, axis=-1)
    sums = np.add.reduceat(arr, row_starts, axis=-2, dtype=np.float64)
    sums = np.add.reduceat(sums, col_starts, axis=-1)
    counts = np.minimum(query_block, q - row_starts)[:, None] * np.minimum(
        key_block, k - col_starts
    )
    return sums / counts


def pool_for_display(
    matrix_or_array: Any, size: int = DISPLAY_SIZE, mode: str = "max"
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Pool the last two axes to at most ``size`` positions each, for drawing.

    The block is ``ceil(length / size)`` positions per axis and the last block may be partial;
    each cell is the max (or the mean) over the positions its block covers. This is the
    server's pooling too. Returns ``(pooled, info)``: max keeps the input's dtype, mean is
    float64; ``info`` is ``{"query_block", "key_block", "mode", "source_len": (q, k)}``, or
    ``None`` (and the input unchanged) when both axes already fit.
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
    q, k = (int(n) for n in arr.shape[-2:])
    query_block, key_block = _blocks(q, size), _blocks(k, size)
    if query_block == key_block == 1:
        return arr, None
    info = {"query_block": query_block, "key_block": key_block, "mode": mode, "source_len": (q, k)}
    return _reduce(arr, query_block, key_block, mode), info


@dataclass(frozen=True)
class _Pooling:
    """How a drawn matrix was made from the exact one: blocks, mode and source positions."""

    query_block: int
    key_block: int
    mode: str
    query_range: tuple[int, int]  # [start, stop) in source positions
    key_range: tuple[int, int]
    source_len: tuple[int, int]  # the whole layer's (q, k)

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> _Pooling:
        """From ``pool_for_display``'s info or a ``Reduction``-shaped dict."""
        if "source_len" in info:
            source = tuple(int(n) for n in info["source_len"])
        elif "source_shape" in info:
            source = tuple(int(n) for n in info["source_shape"])[-2:]
        else:
            raise InvalidInputError(
                "pooling needs 'source_len' (q, k) or 'source_shape' (batch, heads, q, k)"
            )
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

        return cls(
            query_block=max(1, int(info.get("query_block") or 1)),
            key_block=max(1, int(info.get("key_block") or 1)),
            mode=mode,
            query_range=window("query_start", "query_stop", q),
            key_range=window("key_start", "key_stop", k),
            source_len=(q, k),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """The pooled matrix's (rows, columns)."""
        (q0, q1), (k0, k1) = self.query_range, self.key_range
        return -(-(q1 - q0) // self.query_block), -(-(k1 - k0) // self.key_block)

    @property
    def pooled(self) -> bool:
        return self.query_block > 1 or self.key_block > 1

    @property
    def windowed(self) -> bool:
        return (self.query_range, self.key_range) != (
            (0, self.source_len[0]),
            (0, self.source_len[1]),
        )

    def note(self) -> str:
        """``"max-pooled to 512×512 (block 8)"`` and, for a window, which one."""
        parts = []
        if self.windowed:
            (q0, q1), (k0, k1) = self.query_range, self.key_range
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
        return {
            "query_block": self.query_block,
            "key_block": self.key_block,
            "mode": self.mode,
            "source_len": list(self.source_len),
            "query_range": list(self.query_range),
            "key_range": list(self.key_range),
        }


def _given_pooling(pooling: Mapping[str, Any] | None, name: str) -> _Pooling | None:
    """One description for every layer, or ``{layer: description}``."""
    if not pooling:
        return None
    keys = {"query_block", "key_block", "mode", "source_len", "source_shape"}
    info = pooling if keys & set(pooling) else pooling.get(name)
    return None if info is None else _Pooling.from_info(info)


def _local_pooling(info: Mapping[str, Any] | None) -> _Pooling | None:
    return None if info is None else _Pooling.from_info(info)


# --- shared helpers -------------------------------------------------------------------------


def _item(
    attention: Any,
    *,
    batch_index: int,
    name: str = "attention",
    pooling: _Pooling | None = None,
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


def _head_view(
    item: np.ndarray, head: int, given: _Pooling | None, size: int = DISPLAY_SIZE
) -> tuple[np.ndarray, _Pooling | None]:
    """One head as drawn: max-pooled above `size` unless the server pooled it."""
    if given is not None:
        return item[head], given
    matrix, info = pool_for_display(item[head], size)
    return matrix, _local_pooling(info)


def _mean_view(
    item: np.ndarray, given: _Pooling | None, size: int = DISPLAY_SIZE
) -> tuple[np.ndarray, _Pooling | None]:
    """The mean over heads as drawn: the max-pooled mean, summed a block of rows at a time.

    Data the server pooled is averaged as it came (the mean of pooled heads).
    """
    heads, q, k = item.shape
    if given is not None:
        return item.mean(axis=0, dtype=np.float64), given
    query_block, key_block = _blocks(q, size), _blocks(k, size)
    if query_block == key_block == 1:
        return item.mean(axis=0, dtype=np.float64), None
    # Whole query blocks per chunk, so each chunk pools on its own.
    rows = query_block * max(1, _CHUNK_BYTES // (8 * k * query_block))
    pooled = []
    for start in range(0, q, rows):
        chunk = np.zeros((min(rows, q - start), k))
        for head in item:
            chunk += head[start : start + rows]
        chunk /= heads
        pooled.append(_reduce(chunk, query_block, key_block, "max"))
    info = {"query_block": query_block, "key_block": key_block, "mode": "max", "source_len": (q, k)}
    return np.concatenate(pooled), _local_pooling(info)


def _select_head(
    item: np.ndarray, head: int | None, *, name: str, given: _Pooling | None = None
) -> tuple[np.ndarray, str, _Pooling | None]:
    """The matrix to draw, its title and how it was pooled: one head, or the mean of all."""
    heads = item.shape[0]
    if head is None:
        matrix, pooling = _mean_view(item, given)
        what = f"mean of {heads} head{'s' * (heads != 1)}"
        if given is not None and given.pooled:
            what = f"mean of {heads} pooled head{'s' * (heads != 1)}"
    else:
        if not 0 <= head < heads:
            raise InvalidInputError(f"head {head} does not exist in {name}; use 0..{heads - 1}")
        matrix, pooling = _head_view(item, head, given)
        what = f"head {head}"
    note = pooling.note() if pooling is not None else ""
    return matrix, f"{name} — {what}" + (f"\n{note}" if note else ""), pooling


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


def _tick_step(n: int, max_labels: int = MAX_TICK_LABELS) -> int:
    """Label every k-th position so that at most ``max_labels`` labels show."""
    return max(1, math.ceil(n / max_labels))


def _per_layer(analysis: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Accept ``{layer: metrics}`` or the ``analysis.json`` shape ``{"layers": {...}, ...}``."""
    if analysis is None:
        return {}
    layers = analysis.get("layers")
    # A layer named "layers" holds metrics (num_heads); analysis.json's "layers" holds layers.
    if isinstance(layers, Mapping) and "num_heads" not in layers:
        return layers
    return analysis


# --- matplotlib -----------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from neural_attn.client._figures import attention_figure_class

    fig = attention_figure_class()(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _masked_cells(views: Sequence[np.ndarray]) -> np.ndarray | None:
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
    pooling: _Pooling | None = None,
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
        (q0, q1), (k0, k1) = pooling.query_range, pooling.key_range
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


def _source_len(item: np.ndarray, pooling: _Pooling | None) -> tuple[int, int]:
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
    pooling: Mapping[str, Any] | None = None,
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
        given = _given_pooling(pooling, name)
        item = _item(attention, batch_index=batch_index, name=name, pooling=given)
        panels.append(_select_head(item, head, name=name, given=given))
    # One scale for the whole figure, so panels compare by colour.
    vmax = max(float(matrix.max()) for matrix, _, _ in panels) or 1.0
    image = None
    for ax, (matrix, title, drawn_pooling) in zip(axes, panels, strict=False):
        query_tokens, key_tokens = _axis_tokens(tokens, *_source_len(matrix, drawn_pooling))
        image = _draw(
            ax,
            matrix,
            query_tokens=query_tokens,
            key_tokens=key_tokens,
            vmax=vmax,
            pooling=drawn_pooling,
            mask=_masked_cells([matrix]),
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
    pooling: Mapping[str, Any] | None = None,
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
    given = None if pooling is None else _Pooling.from_info(pooling)
    item = _item(attention, batch_index=batch_index, pooling=given)
    heads = item.shape[0]
    views = [_head_view(item, h, given) for h in range(heads)]
    drawn_pooling = views[0][1]
    ncols = min(4, heads)
    nrows = math.ceil(heads / ncols)
    fig = _new_figure(3.6 * ncols + 1.0, 3.4 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    query_tokens, key_tokens = _axis_tokens(tokens, *_source_len(item, drawn_pooling))
    # Max-pooling keeps the largest value, so the shared scale is the exact one.
    vmax = max(float(matrix.max()) for matrix, _ in views) or 1.0
    mask = _masked_cells([matrix for matrix, _ in views])
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
    pooling: Mapping[str, Any] | None = None,
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
    from neural_attn.client._html import write_page

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
