"""Attention metrics: the documented per-head numbers, a pattern label, and rollout.

Shared by the thin client and the server, so it imports numpy, the standard library and
`neural_attn.pooling` (numpy only).
Attention is softmax probabilities of shape ``[batch, head, query_pos, key_pos]``: rows sum to 1
and masked keys are exactly 0. Every result is plain Python (floats, ints, lists, dicts) so it
goes straight into ``json.dumps`` (it is the content of ``analysis.json``).

Memory stays bounded for long sequences: metrics are summed one head at a time, and within a
head one block of query rows at a time (about ``_BLOCK_BYTES`` of float64 per buffer), so a
float16/float32 layer (or a read-only memmap of one) is never copied whole to float64. The sums
are those of `LayerAccumulator`, which also takes a layer in tiles of query rows (in any order)
for a layer that never exists whole; its metrics are exact, equal to the whole layer's up to
the rounding of sums taken in another order.
``Rollout`` keeps the running product and one head mean, not a list of layers, and it too takes
a layer whole or in tiles of query rows. It is exact (``n x n``) while ``n <= ROLLOUT_EXACT_MAX``;
a longer rollout is the product of each layer's head mean pooled to ``ROLLOUT_POOLED_SIZE``
cells a side in `neural_attn.pooling`'s blocks (mean over a block's query rows, sum over its key
columns), summed from the tiles without ever holding ``n x n``; ``Rollout.pooling`` and
``summarize_layers``' ``"rollout_pooling"`` say so.
A ``should_stop`` callable, where a function takes one, is asked once per block (tens of ms of
work): when it answers True the work ends with `CancelledError` (a server's call was cancelled
or ran past its deadline).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import numpy as np

from neural_attn.errors import CancelledError, InvalidInputError
from neural_attn.pooling import block_counts, block_size, fold_rows, pooled_length

__all__ = [
    "METRICS",
    "PATTERN_LABELS",
    "ROLLOUT_EXACT_MAX",
    "ROLLOUT_POOLED_SIZE",
    "HeadNumbers",
    "LayerAccumulator",
    "LayerMetrics",
    "Metric",
    "Rollout",
    "StopCheck",
    "analyze_attention_patterns",
    "attention_rollout",
    "averaged",
    "check_stop",
    "distribution_stats",
    "head_value",
    "layer_metrics",
    "numbers",
    "per_head_lists",
    "record",
    "rollout_pooling",
    "summarize_layers",
]

PATTERN_LABELS = ("local", "global", "prefix_suffix", "sparse", "mixed")

# Asked between blocks of work; True ends the work (a cancelled call, a passed deadline).
StopCheck = Callable[[], bool] | None


def row_tolerance(dtype: Any) -> float:
    """How far from 1 a row of softmax probabilities of `dtype` may sum: the one tolerance every
    check of sent or computed attention uses."""
    return 1e-2 if np.dtype(dtype) == np.float16 else 1e-3


def check_stop(should_stop: StopCheck) -> None:
    """Raise `CancelledError` when `should_stop` says the work is no longer wanted."""
    if should_stop is not None and should_stop():
        raise CancelledError(
            "the call was cancelled or ran past its deadline; the analysis stopped"
        )


class Distribution(TypedDict):
    mean: float
    std: float
    min: float
    max: float


class LayerMetrics(TypedDict, total=False):
    """One layer's metrics, the documented names; each list holds one entry per head.

    The one record the analysis makes, the server sends (``neural_attn.v1.LayerAnalysis``),
    the SDK returns and the renderers read, its keys those of `METRICS` (`record` builds it;
    tests/analysis/test_metric_registry.py checks this annotation names them all). ``shape``
    is set by ``layer_metrics``.
    """

    num_heads: int
    attention_entropy: list[float]
    max_attention_per_head: list[float]
    attention_distribution: list[Distribution]
    diagonal_attention_strength: list[float]
    avg_entropy: float
    avg_max_attention: float
    avg_diagonal_strength: float
    pattern_per_head: list[str]
    mean_attention_distance: list[float]
    normalized_entropy: list[float]
    shape: list[int]


class HeadNumbers(TypedDict):
    """What a metric is computed from: one layer's per-head numbers averaged over the batch
    (``entropy``, ``row_max``, ``diagonal``, ``distance``, ``window_mass``, ``edge_mass``,
    ``mean``, ``std``, ``min``, ``max``: arrays of one value per head, see `_head_numbers`) and
    the key length ``k``."""

    numbers: Mapping[str, np.ndarray]
    k: int


@dataclass(frozen=True)
class Metric:
    """One per-head metric: how it is computed and where each table shows it.

    Args:
        key: its per-head list in `LayerMetrics`; for a statistic of
            ``attention_distribution``, the flat name (``distribution_mean``) that profiles
            and comparisons use.
        wire: its field of ``neural_attn.v1.HeadMetrics``; ``number``: that field's number,
            which orders the lists of a record as the proto orders its fields.
        compute: its per-head values (floats, or strings for a label) from `HeadNumbers`.
        label: its name on the page (panel and metrics table); None: not on the page.
        column: its column in ``neural-attn-client analyze``'s rows; None: not there.
        console: its header in the console summary; None: not in that table.
        average: the `LayerMetrics` key (and ``LayerAnalysis`` field) of its mean over heads;
            ``average_number``: that field's number.
        stat: the key of ``attention_distribution`` it is, when it is one.
        in_profile_table: one of the metrics ``profile --format table`` shows.
        compare_column: its column of deltas in ``compare``'s rows; None: not there.
    """

    key: str
    wire: str
    number: int
    compute: Callable[[HeadNumbers], Sequence[Any]]
    label: str | None = None
    column: str | None = None
    console: str | None = None
    average: str | None = None
    average_number: int | None = None
    stat: str | None = None
    in_profile_table: bool = False
    compare_column: str | None = None

    @property
    def is_label(self) -> bool:
        """A label per head (a string), averaged by the most common one, not a number."""
        return self.key == "pattern_per_head"


def _number(name: str) -> Callable[[HeadNumbers], Sequence[Any]]:
    return lambda h: _floats(h["numbers"][name])


def _normalized_entropy(h: HeadNumbers) -> list[float]:
    entropy, k = h["numbers"]["entropy"], h["k"]
    return _floats(entropy / math.log(k) if k > 1 else np.zeros(len(entropy)))


def _patterns(h: HeadNumbers) -> list[str]:
    m, k = h["numbers"], h["k"]
    edge = max(1, k // 20)
    norm_entropy = _normalized_entropy(h)
    return [
        _pattern_label(
            k=k,
            normalized_entropy=norm_entropy[head],
            diagonal_strength=float(m["diagonal"][head]),
            window_mass=float(m["window_mass"][head]),
            edge_mass=float(m["edge_mass"][head]),
            edges_small=k >= 4 * edge,
        )
        for head in range(len(norm_entropy))
    ]


# The one list of per-head metrics, in the order the tables show them. Every table is built
# from it: the record (`LayerMetrics`) and its empty and averaged forms, the wire
# (server/convert.py, client/_messages.py), the page (client/_html.py), the console summary
# (client/render.py) and the CLI's rows (client/_analysis_cli.py).
METRICS: tuple[Metric, ...] = (
    Metric(
        "attention_entropy",
        "entropy",
        2,
        _number("entropy"),
        label="entropy",
        column="entropy",
        console="entropy",
        average="avg_entropy",
        average_number=5,
        compare_column="d_entropy",
    ),
    Metric(
        "normalized_entropy",
        "normalized_entropy",
        11,
        _normalized_entropy,
        label="normalized entropy",
        column="norm_entropy",
        in_profile_table=True,
    ),
    Metric(
        "max_attention_per_head",
        "max_attention",
        3,
        _number("row_max"),
        label="max attention",
        column="max_attention",
        console="max attn",
        average="avg_max_attention",
        average_number=6,
        in_profile_table=True,
        compare_column="d_max_attention",
    ),
    Metric(
        "diagonal_attention_strength",
        "diagonal_strength",
        4,
        _number("diagonal"),
        label="diagonal strength",
        column="diagonal",
        console="diagonal",
        average="avg_diagonal_strength",
        average_number=7,
        in_profile_table=True,
        compare_column="d_diagonal",
    ),
    Metric(
        "mean_attention_distance",
        "mean_distance",
        10,
        _number("distance"),
        label="mean distance",
        column="distance",
        in_profile_table=True,
    ),
    Metric("pattern_per_head", "pattern", 9, _patterns, column="pattern", console="pattern"),
    Metric("distribution_mean", "mean", 5, _number("mean"), stat="mean"),
    Metric("distribution_std", "std", 6, _number("std"), stat="std"),
    Metric("distribution_min", "min", 7, _number("min"), stat="min"),
    Metric("distribution_max", "max", 8, _number("max"), stat="max"),
)


def per_head_lists() -> list[Metric]:
    """The metrics that are a list of `LayerMetrics` (not a distribution statistic), in the
    record's order: their wire field numbers'."""
    return sorted((m for m in METRICS if m.stat is None), key=lambda m: m.number)


def distribution_stats() -> list[Metric]:
    """The statistics of ``attention_distribution``, in the record's order."""
    return sorted((m for m in METRICS if m.stat is not None), key=lambda m: m.number)


def averaged() -> list[Metric]:
    """The metrics with a mean over heads in `LayerMetrics`, in the record's order."""
    return sorted((m for m in METRICS if m.average), key=lambda m: m.average_number or 0)


def numbers() -> list[Metric]:
    """The numeric metrics in table order, the distribution's statistics last: the flat
    per-head numbers of a profile or a comparison."""
    return [m for m in METRICS if not m.is_label]


def head_value(metrics: Mapping[str, Any], metric: Metric, head: int) -> Any:
    """One head's value of `metric` in a `LayerMetrics` record."""
    if metric.stat is not None:
        return metrics["attention_distribution"][head][metric.stat]
    return metrics[metric.key][head]


def record(num_heads: int, per_head: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """A `LayerMetrics` record from each metric's per-head values (by key), means included:
    the one shape the analysis, its empty and averaged forms and the SDK's dict share."""
    out: dict[str, Any] = {"num_heads": int(num_heads)}
    for m in per_head_lists():
        out[m.key] = list(per_head[m.key])
    out["attention_distribution"] = [
        {m.stat: float(per_head[m.key][h]) for m in distribution_stats()} for h in range(num_heads)
    ]
    for m in averaged():
        if m.average:
            out[m.average] = float(np.mean(per_head[m.key])) if num_heads else 0.0
    return out


# Thresholds of the pattern rule (see analyze_attention_patterns).
GLOBAL_MIN_NORMALIZED_ENTROPY = 0.9
LOCAL_MIN_WINDOW_MASS = 0.7
LOCAL_MIN_DIAGONAL_STRENGTH = 2.0
LOCAL_MAX_NORMALIZED_ENTROPY = 0.5
PREFIX_SUFFIX_MIN_EDGE_MASS = 0.5
SPARSE_MAX_NORMALIZED_ENTROPY = 0.5

# float16 on the wire and float32 softmax can leave values a hair below 0; further is an error.
_NEGATIVE_TOLERANCE = 1e-6

# float64 bytes of one block of query rows; a few buffers of this size are the extra memory.
_BLOCK_BYTES = 16 * 2**20
# Values of one block of rows (every head) the metrics work on at once, in two float32 buffers
# of 4 MiB each: fewer, larger blocks cost fewer numpy calls, and measured a little faster than
# 1 MiB ones here (a 16 MiB tile of 4,096 keys: 23 against 27 ms, side by side).
_METRIC_BLOCK_ELEMENTS = 2**20
_MAX_METRIC_THREADS = 4  # threads that sum the blocks of one tile

_SHAPES_THAT_WORK = (
    "(batch, heads, query_len, key_len), (heads, query_len, key_len) "
    "or (query_len, key_len) for one head"
)


def _as_probabilities(attention: Any, *, min_rank: int = 2, max_rank: int = 4) -> np.ndarray:
    """Check ``attention`` is a finite, non-negative float tensor of an accepted rank."""
    try:
        arr = np.asarray(attention)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"attention must be a numeric array of shape {_SHAPES_THAT_WORK}: {exc}"
        ) from exc
    if not min_rank <= arr.ndim <= max_rank:
        raise InvalidInputError(
            f"attention has shape {tuple(arr.shape)} (rank {arr.ndim}); "
            f"expected {_SHAPES_THAT_WORK}"
        )
    if arr.size == 0:
        raise InvalidInputError(
            f"attention has shape {tuple(arr.shape)} with an empty axis; "
            f"expected {_SHAPES_THAT_WORK} with every axis at least 1"
        )
    # min and max propagate NaN and show an infinity, without a full-size boolean temporary.
    lowest, highest = arr.min(), arr.max()
    if not (np.isfinite(lowest) and np.isfinite(highest)):
        raise InvalidInputError(
            f"attention of shape {tuple(arr.shape)} holds NaN or infinite values; "
            "expected softmax probabilities (finite, rows summing to 1)"
        )
    if lowest < -_NEGATIVE_TOLERANCE:
        raise InvalidInputError(
            f"attention of shape {tuple(arr.shape)} holds negative values "
            f"(min {float(lowest):.3g}); expected softmax probabilities, not raw scores"
        )
    return arr


def _to_4d(arr: np.ndarray) -> np.ndarray:
    """(q, k) -> (1, 1, q, k); (h, q, k) -> (1, h, q, k); (b, h, q, k) unchanged."""
    while arr.ndim < 4:
        arr = arr[np.newaxis]
    return arr


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _block_rows(k: int) -> int:
    """Query rows per block so one float64 block of ``k`` columns is about _BLOCK_BYTES."""
    return max(1, _BLOCK_BYTES // (8 * k))


def analyze_attention_patterns(attention: Any, *, should_stop: StopCheck = None) -> LayerMetrics:
    """Per-head metrics of one attention layer, averaged over the batch.

    ``attention`` is ``(batch, heads, q, k)``, ``(heads, q, k)`` or ``(q, k)`` (one head).
    Each metric is computed per batch item and head, then averaged over the batch items
    (``attention_distribution``'s min and max included); ``avg_*`` are means over heads.

    Keys (lists hold one entry per head):

    - ``num_heads``; ``attention_entropy``: mean over query rows of ``-sum p log p``
      (``0 log 0 = 0``); ``normalized_entropy``: that over ``log(k)`` (0 when ``k == 1``);
      ``max_attention_per_head``: mean over rows of the row max;
      ``attention_distribution``: ``{"mean", "std", "min", "max"}`` of the head's matrix;
      ``diagonal_attention_strength``: mean of the leading diagonal (``i == j`` for
      ``i < min(q, k)``) over mean of the matrix (0 for an all-zero matrix);
      ``mean_attention_distance``: mean over rows of ``sum_j p_ij |i - j|``;
      ``avg_entropy``, ``avg_max_attention``, ``avg_diagonal_strength``.
    - ``pattern_per_head``: the first rule that holds, in this order, on the batch-averaged
      numbers, with ``H`` the normalized entropy, ``w = max(1, k // 10)`` the local window,
      ``e = max(1, k // 20)`` the edge width, *window mass* the mean over rows of the mass
      with ``|i - j| <= w`` and *edge mass* the mean over rows of the mass on the first ``e``
      and last ``e`` key columns:

      1. ``k == 1``: ``"mixed"`` (one key leaves nothing to tell apart);
      2. ``"global"``: ``H >= 0.9`` (close to uniform);
      3. ``"prefix_suffix"``: ``k >= 4 * e`` (the edges are at most half the keys) and
         edge mass ``>= 0.5`` (vertical bands on the first / last keys: at least half of a
         row's weight on them, as BERT's heads that rest on ``[CLS]`` and ``[SEP]``);
      4. ``"local"``: window mass ``>= 0.7``, or diagonal strength ``>= max(2, k / 2)`` (on
         average at least half of a row's mass on its own position) with ``H <= 0.5``;
      5. ``"sparse"``: ``H <= 0.5`` (focused, but on spots off the diagonal and the edges);
      6. ``"mixed"`` otherwise.
    """
    return _analyze(_as_probabilities(attention), should_stop=should_stop)


def layer_metrics(attention: Any, *, should_stop: StopCheck = None) -> LayerMetrics:
    """One layer's entry of ``summarize_layers(...)["layers"]``: the metrics plus ``"shape"``.

    ``attention`` is one layer's ``(batch, heads, q, k)`` array (float16 or float32, a
    read-only memmap included); it is read one head and block of query rows at a time. A layer
    that arrives in tiles of query rows (never whole) goes through `LayerAccumulator`, the one
    implementation behind this function, and gets the same record.
    """
    arr = _as_probabilities(attention)
    metrics = _analyze(arr, should_stop=should_stop)
    metrics["shape"] = [int(n) for n in arr.shape]
    return metrics


def _analyze(arr: np.ndarray, *, should_stop: StopCheck = None) -> LayerMetrics:
    """analyze_attention_patterns on an array _as_probabilities has checked: the whole layer
    as one tile of a `LayerAccumulator`."""
    arr = _to_4d(arr)
    accumulator = LayerAccumulator(arr.shape)
    accumulator.add(0, arr, should_stop=should_stop)
    return accumulator._metrics()


# The sums kept per (batch item, head) across blocks and tiles of query rows; with the running
# min and max and the std's shift they are everything a head's numbers are made of.
_SUMS = (
    "total",
    "entropy",
    "row_max",
    "diagonal",
    "distance",
    "window_mass",
    "edge_mass",
    "deviation",
    "squared_deviation",
)


class LayerAccumulator:
    """One layer's metrics summed from tiles of query rows, for a layer that is never whole.

    ``LayerAccumulator((batch, heads, q, k))``; ``add(start, values)`` for each tile, where
    ``values`` is ``(batch, heads, rows, k)`` holding query rows ``start:start + rows`` of
    every batch item and head; ``result()`` once every row was added. The result equals
    ``layer_metrics`` of the whole layer (``layer_metrics`` is this class fed one tile), up to
    the rounding of sums taken in another order: tiles may come in any order.

    State is a few float64 sums per (item, head) (see `_tile_sums`) and one flag per query
    row. ``add`` walks a tile one head and block of rows at a time in float64 (about
    ``_BLOCK_BYTES`` per buffer, three buffers), never copying the tile whole. The std is
    taken around a shift, per (item, head) the mean of the first block seen, which keeps the
    one-pass variance free of cancellation whatever the order of the tiles.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        dims = tuple(shape)
        if len(dims) != 4 or not all(
            isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1 for n in dims
        ):
            raise InvalidInputError(
                f"a layer accumulator needs the layer's shape (batch, heads, query_len, "
                f"key_len), four positive integers; got {dims}"
            )
        self.shape: tuple[int, int, int, int] = cast(
            tuple[int, int, int, int], tuple(int(n) for n in dims)
        )
        batch, heads, q, _ = self.shape
        self._sums = {name: np.zeros((batch, heads)) for name in _SUMS}
        self._lowest = np.full((batch, heads), math.inf)
        self._highest = np.full((batch, heads), -math.inf)
        self._shift = np.full((batch, heads), math.nan)  # NaN: no block of the head seen yet
        self._added = np.zeros(q, dtype=bool)

    def add(self, start: int, values: Any, *, should_stop: StopCheck = None) -> None:
        """Add query rows ``start:start + values.shape[2]`` of every batch item and head.

        ``values``: a float16, float32 or float64 array ``(batch, heads, rows, k)`` of
        softmax probabilities. A tile of another shape, rows outside ``[0, q)``, rows added
        before, or values that are NaN, infinite or negative raise `InvalidInputError`;
        ``should_stop`` is asked once per block (`CancelledError`). A tile that raises adds
        nothing.
        """
        batch, heads, q, k = self.shape
        tile = np.asarray(values)
        if not np.issubdtype(tile.dtype, np.floating):
            raise InvalidInputError(
                f"a tile of attention holds float16, float32 or float64 probabilities; "
                f"got dtype {tile.dtype}"
            )
        if (
            tile.ndim != 4
            or tile.shape[:2] != (batch, heads)
            or tile.shape[3] != k
            or tile.shape[2] < 1
        ):
            raise InvalidInputError(
                f"a tile of this layer of shape {self.shape} has shape "
                f"({batch}, {heads}, rows, {k}) with at least one row; got {tuple(tile.shape)}"
            )
        start, stop = _new_rows(start, tile.shape[2], self._added, "tile")
        rows = tile.shape[2]
        step = max(1, min(rows, _METRIC_BLOCK_ELEMENTS // (batch * heads * k)))
        shift = self._shift.copy()
        unset = np.isnan(shift)  # a head's first block seen sets its shift: that block's mean
        if unset.any():
            first = tile[:, :, :step].sum(axis=(2, 3), dtype=np.float64) / (step * k)
            shift[unset] = first[unset]
        starts = range(0, rows, step)
        workers = max(1, min(_metric_threads(), len(starts)))
        parts = [starts[w::workers] for w in range(workers)]
        halt = _shared_stop(should_stop)

        def run(part: range) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
            sums = {name: np.zeros((batch, heads)) for name in _SUMS}
            lowest, highest = np.full((batch, heads), math.inf), np.full((batch, heads), -math.inf)
            work = _Work(tile.dtype, (batch, heads, step, k), q)
            for first in part:
                check_stop(halt)
                block = tile[:, :, first : first + step]
                low, high = _block_sums(block, start + first, q, shift, work, sums)
                np.minimum(lowest, low, out=lowest)
                np.maximum(highest, high, out=highest)
            return sums, lowest, highest

        if workers == 1:
            done = [run(parts[0])]
        else:  # numpy lets go of the GIL: the blocks of a tile are summed on every core
            done = list(_metric_pool().map(run, parts))
        for sums, lowest, highest in done:  # nothing is kept of a tile that raised
            for name in _SUMS:
                self._sums[name] += sums[name]
            np.minimum(self._lowest, lowest, out=self._lowest)
            np.maximum(self._highest, highest, out=self._highest)
        self._shift = shift
        self._added[start:stop] = True

    def result(self) -> LayerMetrics:
        """The layer's `LayerMetrics`, ``"shape"`` included: what ``layer_metrics`` of the
        whole layer returns. `InvalidInputError` while some query rows were never added."""
        metrics = self._metrics()
        metrics["shape"] = list(self.shape)
        return metrics

    def _metrics(self) -> LayerMetrics:
        """The record without ``"shape"`` (analyze_attention_patterns')."""
        batch, heads, q, k = self.shape
        if not self._added.all():
            missing = np.flatnonzero(~self._added)
            raise InvalidInputError(
                f"{len(missing)} of the layer's {q} query rows were never added (the first is "
                f"row {int(missing[0])}); every row needs a tile before the metrics are known"
            )
        per_head = [
            [
                _head_numbers(
                    {name: float(self._sums[name][b, h]) for name in _SUMS},
                    lowest=float(self._lowest[b, h]),
                    highest=float(self._highest[b, h]),
                    q=q,
                    k=k,
                )
                for h in range(heads)
            ]
            for b in range(batch)
        ]
        m = {
            name: np.mean([[numbers[name] for numbers in item] for item in per_head], axis=0)
            for name in per_head[0][0]
        }
        numbers = HeadNumbers(numbers=m, k=int(k))
        return cast(LayerMetrics, record(heads, {mt.key: mt.compute(numbers) for mt in METRICS}))


def _new_rows(start: Any, rows: int, added: np.ndarray, what: str) -> tuple[int, int]:
    """[start, stop) of a tile of `rows` query rows, checked: inside the layer's rows (`added`
    has one flag per row) and none of them added before."""
    if isinstance(start, bool) or not isinstance(start, int | np.integer):
        raise InvalidInputError(f"a tile's start is a query row (an int); got {start!r}")
    start, q = int(start), len(added)
    stop = start + rows
    if start < 0 or stop > q:
        raise InvalidInputError(
            f"a {what} of query rows {start}:{stop} lies outside the layer's rows [0, {q})"
        )
    already = added[start:stop]
    if already.any():
        row = start + int(np.argmax(already))
        raise InvalidInputError(
            f"a {what} of query rows {start}:{stop} overlaps rows added before (row {row}); "
            "each query row is added once"
        )
    return start, stop


def _shared_stop(should_stop: StopCheck) -> StopCheck:
    """`should_stop` for several threads: asked by one at a time, and never again once it said
    stop (so a stop costs each thread at most the block it is in)."""
    if should_stop is None:
        return None
    lock = threading.Lock()
    said: list[bool] = []  # [True] once it said stop

    def asked() -> bool:
        with lock:
            if not said and should_stop():
                said.append(True)
            return bool(said)

    return asked


def _metric_threads() -> int:
    return min(_MAX_METRIC_THREADS, os.cpu_count() or 1)


@functools.cache
def _metric_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_metric_threads(), thread_name_prefix="metrics")


class _Work:
    """The work space of one block of rows of every head: the probabilities in the working
    dtype when they need a copy (float64 input stays float64, the rest is float32), a product
    buffer, and |i - j| and the local window as rows of strided views (no (rows, k) made)."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, int, int, int], q: int) -> None:
        wide = dtype == np.float64
        self.dtype = np.dtype(np.float64 if wide else np.float32)
        self.tiny = float(np.finfo(np.float64 if wide else np.float32).tiny)
        self.block = np.empty(shape, self.dtype)
        self.product = np.empty(shape, self.dtype)
        k = shape[-1]
        self.q = q
        # distances[q - 1 - i + j] = |i - j|: row i of the |i - j| matrix is a slice of it
        self.distances = np.abs(np.arange(1 - q, k)).astype(self.dtype)
        self.window = max(1, k // 10)
        self.local = (self.distances <= self.window).astype(self.dtype)
        self.columns = np.arange(k, dtype=self.dtype)

    def rows(self, base: np.ndarray, top: int, rows: int, k: int) -> np.ndarray:
        """Rows ``top:top + rows`` of the (q, k) matrix whose row i is ``base[q-1-i:][:k]``:
        a view, each row starting one element before the last."""
        step = base.strides[0]
        start = base[self.q - 1 - top :]
        return np.lib.stride_tricks.as_strided(start, shape=(rows, k), strides=(-step, step))


def _block_sums(
    block: np.ndarray,
    top: int,
    q: int,
    shift: np.ndarray,
    work: _Work,
    sums: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Add the `_SUMS` of `block`, rows ``top:top + rows`` of every (item, head) ``(batch,
    heads, rows, k)``, into `sums`; return each head's min and max there. Elementwise work
    is in the working dtype, each row summed pairwise (numpy's sum), rows added in float64.
    `shift`: each head's shift of the std."""
    batch, heads, rows, k = block.shape
    x = block
    if x.dtype != work.dtype:
        x = work.block[:, :, :rows]
        np.copyto(x, block)
    lowest = x.min(axis=(2, 3))
    if not np.isfinite(lowest).all():
        raise InvalidInputError(
            f"attention rows {top}:{top + rows} hold NaN or infinite values; expected softmax "
            "probabilities (finite, rows summing to 1)"
        )
    if lowest.min() < -_NEGATIVE_TOLERANCE:
        raise InvalidInputError(
            f"attention rows {top}:{top + rows} hold negative values (min "
            f"{float(lowest.min()):.3g}); expected softmax probabilities, not raw scores"
        )
    if lowest.min() < 0:  # a hair below 0: counted as 0
        x = np.maximum(x, 0, out=work.block[:, :, :rows])
        lowest = np.maximum(lowest, 0)
    f64 = np.float64
    totals = x.sum(axis=3).sum(axis=2, dtype=f64)
    if not np.isfinite(totals).all():
        raise InvalidInputError(
            f"attention rows {top}:{top + rows} hold NaN or infinite values; expected softmax "
            "probabilities (finite, rows summing to 1)"
        )
    sums["total"] += totals
    maxima = x.max(axis=3)
    sums["row_max"] += maxima.sum(axis=2, dtype=f64)
    on_diagonal = np.arange(top, min(top + rows, q, k))
    if len(on_diagonal):
        sums["diagonal"] += x[:, :, on_diagonal - top, on_diagonal].sum(axis=2, dtype=f64)
    edge = max(1, k // 20)
    if 2 * edge >= k:
        sums["edge_mass"] += totals
    else:
        edges = x[..., :edge].sum(axis=3) + x[..., k - edge :].sum(axis=3)
        sums["edge_mass"] += edges.sum(axis=2, dtype=f64)

    t = work.product[:, :, :rows]
    _distance_sums(x, top, work, t, sums)
    if lowest.min() > 0:
        np.log(x, out=t)
    else:  # log(tiny) is finite, so 0 log 0 = 0
        np.maximum(x, work.tiny, out=t)
        np.log(t, out=t)
    sums["entropy"] -= np.vecdot(x, t).sum(axis=2, dtype=f64)
    around = shift[:, :, None, None].astype(work.dtype)
    sums["deviation"] += totals - shift * (rows * k)
    np.subtract(x, around, out=t)
    sums["squared_deviation"] += np.vecdot(t, t).sum(axis=2, dtype=f64)
    return lowest.astype(f64), maxima.max(axis=2).astype(f64)


def _distance_sums(
    x: np.ndarray, top: int, work: _Work, t: np.ndarray, sums: dict[str, np.ndarray]
) -> None:
    """Add the "distance" and "window_mass" sums of `x`, rows ``top:top + rows`` ``(batch,
    heads, rows, k)``. Only the keys within the local window of some row of the block (the
    near ones) are weighed one by one; every far key lies on the same side of all its rows,
    so its share of ``sum_j p_ij |i - j|`` is two sums per row, taken by one product with
    (1, distance from row ``top``), and it adds nothing to the window mass."""
    rows, k, f64 = x.shape[2], x.shape[3], np.float64
    lo, hi = min(k, max(0, top - work.window)), min(k, top + rows + work.window)
    near, out = x[..., lo:hi], t[..., : hi - lo]
    np.multiply(near, work.rows(work.distances, top, rows, k)[:, lo:hi], out=out)
    distance = out.sum(axis=3)
    np.multiply(near, work.rows(work.local, top, rows, k)[:, lo:hi], out=out)
    sums["window_mass"] += out.sum(axis=3).sum(axis=2, dtype=f64)
    below = np.arange(rows, dtype=f64)  # i - top
    for keys, sign in ((slice(0, lo), 1.0), (slice(hi, k), -1.0)):
        far = x[..., keys]
        if not far.shape[3]:
            continue
        # i - j = (top - j) + (i - top) left of the block, j - i = (j - top) - (i - top) right
        weights = np.stack([np.ones_like(work.columns[keys]), np.abs(top - work.columns[keys])], 1)
        mass, offset = np.moveaxis(np.matmul(far, weights), -1, 0)
        distance += offset
        sums["distance"] += sign * (mass.astype(f64) @ below)
    sums["distance"] += distance.sum(axis=2, dtype=f64)


def _head_numbers(
    sums: Mapping[str, float], *, lowest: float, highest: float, q: int, k: int
) -> dict[str, float]:
    """One (item, head)'s numbers (`HeadNumbers`' names) from its sums over all ``q`` rows."""
    size = q * k
    mean = sums["total"] / size
    variance = max(0.0, sums["squared_deviation"] / size - (sums["deviation"] / size) ** 2)
    diagonal_mean = sums["diagonal"] / min(q, k)
    return {
        "entropy": sums["entropy"] / q,
        "row_max": sums["row_max"] / q,
        "diagonal": diagonal_mean / mean if mean > 0 else 0.0,
        "distance": sums["distance"] / q,
        "window_mass": sums["window_mass"] / q,
        "edge_mass": sums["edge_mass"] / q,
        "mean": mean,
        "std": math.sqrt(variance),
        "min": lowest,
        "max": highest,
    }


def _pattern_label(
    *,
    k: int,
    normalized_entropy: float,
    diagonal_strength: float,
    window_mass: float,
    edge_mass: float,
    edges_small: bool,
) -> str:
    """Apply the rule documented in analyze_attention_patterns to one head's numbers."""
    if k == 1:
        return "mixed"
    if normalized_entropy >= GLOBAL_MIN_NORMALIZED_ENTROPY:
        return "global"
    if edges_small and edge_mass >= PREFIX_SUFFIX_MIN_EDGE_MASS:
        return "prefix_suffix"
    if window_mass >= LOCAL_MIN_WINDOW_MASS or (
        diagonal_strength >= max(LOCAL_MIN_DIAGONAL_STRENGTH, k / 2)
        and normalized_entropy <= LOCAL_MAX_NORMALIZED_ENTROPY
    ):
        return "local"
    if normalized_entropy <= SPARSE_MAX_NORMALIZED_ENTROPY:
        return "sparse"
    return "mixed"


# The rollout is exact up to this many positions (an n x n float64 sum and a float32 product:
# 192 MiB at 4096);
# a longer one is computed on matrices pooled to ROLLOUT_POOLED_SIZE cells a side.
ROLLOUT_EXACT_MAX = 4096
ROLLOUT_POOLED_SIZE = 1024
_FLOAT32_PRODUCT_FROM = 1024  # cells a side past which the rollout's products are float32
_ROLLOUT_POOLING_METHOD = "mean over query rows, sum over key columns"


def rollout_pooling(size: int, block: int) -> dict[str, Any]:
    """How a rollout of ``size`` positions pooled to blocks of ``block`` is described
    (`Rollout.pooling`, ``summarize_layers``' and the service's ``"rollout_pooling"``)."""
    return {
        "size": int(size),
        "pooled_size": pooled_length(int(size), int(block)),
        "block": int(block),
        "method": _ROLLOUT_POOLING_METHOD,
    }


class Rollout:
    """Attention rollout (Abnar & Zuidema, 2020), folded in one layer at a time.

    Per layer, first layer first: ``add(layer)`` with the whole layer, or ``begin(n)``, then
    ``add_rows(start, values)`` for each tile of query rows (any order), then ``end()``;
    ``add`` is those three calls. ``result()`` is ``R = A_L @ ... @ A_1``, a float64 array
    (float32 past 1,024 positions, where the products are float32): how much each output
    position draws on each input position through the whole stack.
    Each ``A`` is the layer's head mean for batch item 0, summed in float64; with
    ``add_residual`` (the default) it becomes ``A + I`` with its rows renormalized to sum to 1,
    modelling the residual connection.

    Exact while ``n <= ROLLOUT_EXACT_MAX``: ``R`` is ``(n, n)`` and the rollout holds the
    running product and the layer's head mean. Longer, it is pooled: with the blocks of
    `neural_attn.pooling` (``block_size(n, ROLLOUT_POOLED_SIZE)`` positions, the last block
    partial, the blocks the display pooling uses), each head mean ``A`` becomes the ``P x P``
    matrix ``Â[I, J] = (1 / |I|) sum_{i in I} sum_{j in J} A[i, j]`` (mean over a block's query
    rows, sum over its key columns, so rows still sum to 1), summed from the tiles' rows
    without ever holding ``n x n``. The residual is ``Â + I`` renormalized, which is exactly
    the pooling of ``A + I`` renormalized (pooling is linear and pools ``I`` to ``I``), and
    ``R`` is the product of the ``Â``: ``(P, P)``, an approximation of the pooled exact
    rollout (pooling does not commute with the product). ``pooling`` says which one it is.
    """

    def __init__(self, *, add_residual: bool = True) -> None:
        self.add_residual = add_residual
        self.problem: str | None = None  # why there is no rollout, once a layer ruled it out
        self._layers = 0
        self._size: int | None = None  # n, set by the first layer
        self._block = 1  # source positions per cell of the matrices; 1: exact
        self._product: np.ndarray | None = None
        self._open = False  # between begin() and end()
        self._mixed: np.ndarray | None = None  # the open layer's head sums, when it fits
        self._added: np.ndarray | None = None  # which of its query rows were added
        self._heads: int | None = None

    @property
    def pooling(self) -> dict[str, Any] | None:
        """``None`` while the rollout is exact (or before a layer); when pooled, ``{"size": n,
        "pooled_size": P, "block": b, "method": ...}`` with ``b`` the block length of
        `neural_attn.pooling.block_size` and ``P`` the cells a side."""
        if self._size is None or self._block == 1:
            return None
        return rollout_pooling(self._size, self._block)

    def add(self, attention: Any) -> None:
        """Fold in the next layer: ``(batch, heads, n, n)`` (item 0 is used), ``(heads, n, n)``
        or ``(n, n)``. A layer that is not square, or not the size of the first, leaves no
        rollout (``problem`` says why)."""
        self._add_checked(_as_probabilities(attention))

    def begin(self, n: int, *, queries: int | None = None) -> None:
        """Start the next layer: ``n`` keys and ``queries`` query rows (default ``n``). A layer
        that is not square, or not the size of the first, leaves no rollout (``problem``
        says why); its tiles are then ignored."""
        if self._open:
            raise InvalidInputError(
                f"rollout layer {self._layers - 1} was begun and not ended; end() it first"
            )
        queries = n if queries is None else queries
        for value in (n, queries):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise InvalidInputError(
                    f"a rollout layer's size is a positive number of positions; got {value!r}"
                )
        n, queries = int(n), int(queries)
        index = self._layers
        self._layers += 1
        self._open = True
        if self.problem is not None:
            return
        if queries != n:
            self._give_up(
                f"rollout layer {index} has {queries} query rows and {n} keys; rollout needs "
                "square self-attention (heads, n, n) of one batch item"
            )
            return
        if self._size is not None and n != self._size:
            self._give_up(
                f"rollout layer {index} has size {n} but layer 0 has {self._size}; "
                "every layer needs the same (heads, n, n) shape"
            )
            return
        if self._size is None:
            self._size = n
            self._block = 1 if n <= ROLLOUT_EXACT_MAX else block_size(n, ROLLOUT_POOLED_SIZE)
        cells = pooled_length(n, self._block)
        self._mixed = np.zeros((cells, cells))
        self._added = np.zeros(n, dtype=bool)
        self._heads = None

    def add_rows(self, start: int, values: Any) -> None:
        """Add query rows ``start:start + rows`` of the open layer: ``values`` is ``(batch,
        heads, rows, n)`` (item 0 is used; negative values count as 0). Rows outside
        ``[0, n)``, rows added before, another shape or another number of heads than the
        layer's first tile raise `InvalidInputError`."""
        if not self._open:
            raise InvalidInputError("Rollout.add_rows needs a layer begun with begin(n)")
        if self._mixed is None or self._added is None or self._size is None:
            return  # a layer ruled the rollout out
        n = self._size
        tile = np.asarray(values)
        if not np.issubdtype(tile.dtype, np.floating):
            raise InvalidInputError(
                f"a tile of attention holds float16, float32 or float64 probabilities; "
                f"got dtype {tile.dtype}"
            )
        if tile.ndim != 4 or tile.shape[3] != n or 0 in tile.shape:
            raise InvalidInputError(
                f"a rollout tile of a layer of size {n} has shape (batch, heads, rows, {n}), "
                f"every axis at least 1; got {tuple(tile.shape)}"
            )
        heads, rows = tile.shape[1], tile.shape[2]
        if self._heads is not None and heads != self._heads:
            raise InvalidInputError(
                f"a rollout tile has {heads} heads but the layer's first tile had {self._heads}"
            )
        start, stop = _new_rows(start, rows, self._added, "rollout tile")
        self._heads = heads
        item = tile[0]
        step = _block_rows(n)
        block = self._block
        if block == 1:  # the head sum, in float64 a block of rows at a time
            for head in item:
                for first in range(0, rows, step):
                    last = min(rows, first + step)
                    self._mixed[start + first : start + last] += np.maximum(head[first:last], 0.0)
        else:  # a block of rows summed over key blocks and heads, then into its cells' rows
            columns = np.arange(0, n, block)
            for first in range(0, rows, step):
                last = min(rows, first + step)
                heads_block = item[:, first:last]
                if heads_block.min() < 0:
                    heads_block = np.maximum(heads_block, 0.0)
                # the heads' sum first, then keys (in float64): the fold runs along the
                # contiguous axis, over one matrix instead of one per head
                total = heads_block.sum(axis=0)
                sums = fold_rows(total.T, columns, "mean").T
                cells = np.arange(start + first, start + last) // block
                segments = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
                self._mixed[cells[segments]] += fold_rows(sums, segments, "mean")
        self._added[start:stop] = True

    def end(self) -> None:
        """Finish the open layer and fold it into the product. `InvalidInputError` (and no
        rollout from then on) when some of its query rows were never added."""
        if not self._open:
            raise InvalidInputError("Rollout.end needs a layer begun with begin(n)")
        self._open = False
        mixed, added, heads = self._mixed, self._added, self._heads
        self._mixed = self._added = None
        if mixed is None or added is None:
            return  # a layer ruled the rollout out
        index = self._layers - 1
        if not added.all():
            missing = np.flatnonzero(~added)
            problem = (
                f"rollout layer {index}: {len(missing)} of its query rows were never added "
                f"(the first is row {int(missing[0])}); every row needs a tile"
            )
            self._give_up(problem)
            raise InvalidInputError(problem)
        assert heads is not None  # set by the first tile, and every row came in one
        mixed /= heads
        if self._block > 1:  # the mean over each cell's query rows
            mixed /= block_counts(len(added), self._block, dtype=np.float64)[:, None]
        if not math.isfinite(float(mixed.sum())):
            problem = f"rollout layer {index} holds NaN or infinite values"
            self._give_up(problem)
            raise InvalidInputError(problem)
        cells = len(mixed)
        if self.add_residual:
            mixed.flat[:: cells + 1] += 1.0
            mixed /= mixed.sum(axis=-1, keepdims=True)
        # Past _FLOAT32_PRODUCT_FROM cells the product is taken in float32, as the attention
        # itself and as a reply sends the rollout: half of float64's time at 4,096³ (2.2 s
        # against 1.0 here), the same figures to 1e-6.
        factor = mixed.astype(np.float32) if cells > _FLOAT32_PRODUCT_FROM else mixed
        del mixed
        if self._product is not None:
            # Row i of A @ R needs only row i of A, so the product overwrites A block by block.
            rows = _block_rows(cells)
            for start in range(0, cells, rows):
                factor[start : start + rows] = factor[start : start + rows] @ self._product
        self._product = factor

    def result(self) -> np.ndarray | None:
        """The rollout of the layers ended so far, or ``None`` when none was or a layer ruled
        it out: ``(n, n)`` when exact, ``(P, P)`` when pooled (see ``pooling``)."""
        return None if self.problem is not None else self._product

    def _add_checked(self, arr: np.ndarray) -> None:
        """add() on an array _as_probabilities has checked."""
        item = arr[0] if arr.ndim == 4 else arr
        q, n = item.shape[-2:]
        self.begin(n, queries=q)
        self.add_rows(0, item.reshape(1, -1, q, n))
        self.end()

    def _give_up(self, problem: str) -> None:
        self.problem = problem
        self._product = None
        self._mixed = self._added = None


def attention_rollout(layers: Sequence[Any], *, add_residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020) through the layers of one batch item.

    Args:
        layers: one ``(heads, n, n)`` (or ``(n, n)``) attention per layer, first layer first,
            all square and of the same ``n``.
        add_residual: model the residual connection: each head-averaged matrix becomes
            ``A + I`` with its rows renormalized to sum to 1.

    Returns:
        ``R = A_L @ ... @ A_1``, float64 (float32 past 1,024 positions): how much each output
        position draws on each input position through the whole stack, ``(n, n)`` and exact while
        ``n <= ROLLOUT_EXACT_MAX``, else ``(P, P)`` on pooled matrices (see ``Rollout``).
    """
    if len(layers) == 0:
        raise InvalidInputError("attention_rollout needs at least one layer's attention")
    rollout = Rollout(add_residual=add_residual)
    for layer in layers:
        rollout._add_checked(_as_probabilities(layer, max_rank=3))
        if rollout.problem is not None:
            raise InvalidInputError(rollout.problem)
    result = rollout.result()
    assert result is not None
    return result


def summarize_layers(
    attention_by_layer: Mapping[str, Any], *, rollout_as_list: bool = True
) -> dict[str, Any]:
    """The metrics of every layer and, where it applies, the rollout.

    Returns ``{"layers": {name: layer_metrics(attention)}}`` plus ``"rollout"`` (batch item 0,
    layers in the mapping's order) when every layer is square and of the same size: a list
    of rows, or with ``rollout_as_list=False`` the array, for writing it to its own file
    rather than into ``analysis.json``. The rollout is exact, ``(n, n)``, while
    ``n <= ROLLOUT_EXACT_MAX``; beyond, it is pooled (see ``Rollout``) and
    ``"rollout_pooling"`` (``Rollout.pooling``) says how. Layers are read one at a time.
    """
    layers: dict[str, Any] = {}
    rollout = Rollout()
    for name, attention in attention_by_layer.items():
        arr = _as_probabilities(attention)
        metrics = _analyze(arr)
        metrics["shape"] = [int(n) for n in arr.shape]
        layers[name] = metrics
        rollout._add_checked(arr)
    summary: dict[str, Any] = {"layers": layers}
    matrix = rollout.result()
    if matrix is not None:
        summary["rollout"] = matrix.tolist() if rollout_as_list else matrix
        if rollout.pooling is not None:
            summary["rollout_pooling"] = rollout.pooling
    return summary
