"""Head-level analyses beyond one heatmap: masks, sanity, similarity, profiles, comparisons.

Shared by the thin client and the server, so it imports numpy and the standard library only;
the per-head metrics themselves are `neural_attn.analysis`'s (reused, never recomputed here).
Attention is ``[batch, head, query_pos, key_pos]`` softmax probabilities.

- **Masks** (`Mask`): padding keys (token id ``padding_id``) and chosen positions (a CLS, a
  separator; negative counts from the end) are removed from both axes of each item, and every
  row is renormalized over the keys left. A row with no mass left (every key it saw was
  masked) is dropped, and so is an item with no row left; nothing left at all gives zeros.
- **Sanity** (`Sanity`): rows sum to 1 within ``row_tolerance``, no NaN/Inf, the dtype, fully
  masked (all-zero) rows counted, for every result.
- **Similarity**: the Jensen-Shannon distance (``sqrt`` of the divergence, log base 2, so in
  [0, 1]) between two heads is the mean over (item, query row) of the distance between their
  rows; rows where either head has no mass are skipped. 0: identical; 1: disjoint supports.
  Heads at distance <= ``DEFAULT_REDUNDANCY_THRESHOLD`` are linked, and the connected groups
  of links are the redundant groups.
- **Profiles** (`Profile`): per head, the distribution over samples of every metric (mean,
  std, quantiles) and the share of each pattern label, folded in a batch at a time.
- **Comparison** (`compare_layer`): matched heads of two runs, metric deltas (b - a) and JS.

Every function that loops over heads, pairs or blocks takes ``should_stop`` (see
`neural_attn.analysis`): asked about every block of ``_BLOCK_VALUES`` values, so a cancelled
call stops within tens of milliseconds. `similarity_cost` says, from shapes alone, what a
similarity will compare, so a server can refuse it before any work.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from neural_attn import analysis
from neural_attn.analysis import (
    PATTERN_LABELS,
    StopCheck,
    analyze_attention_patterns,
    check_stop,
    layer_metrics,
    row_tolerance,
)
from neural_attn.errors import InvalidInputError

__all__ = [
    "DEFAULT_REDUNDANCY_THRESHOLD",
    "METRICS",
    "QUANTILES",
    "Mask",
    "Profile",
    "Sanity",
    "compare_layer",
    "head_distance",
    "js_divergence",
    "mask_heads",
    "masked_layer_metrics",
    "metric_names",
    "per_item_metrics",
    "redundant_groups",
    "similarity",
    "similarity_cost",
]

# Two heads whose rows put 90% and 100% of their mass on the same key are at 0.23; a head that
# moves a third of its mass elsewhere is at about 0.4. 0.3 calls "the same head twice" redundant.
DEFAULT_REDUNDANCY_THRESHOLD = 0.3


def metric_names() -> tuple[str, ...]:
    """The per-head numbers a profile and a comparison carry, with the documented names (the
    distribution's mean/std/min/max flattened to distribution_*): `analysis.METRICS`' numbers,
    read when asked."""
    return tuple(m.key for m in analysis.numbers())


# metric_names() of the registry as imported.
METRICS = metric_names()
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Samples kept per (head, metric) for quantiles: exact up to this many, a uniform reservoir
# sample beyond (the memory of a profile never grows with the data set).
RESERVOIR_SIZE = 4096
# Values of one block of row-wise work (float64: 8 MiB a buffer): tens of ms, whatever the length.
_BLOCK_VALUES = 1 << 20


def _block_rows(k: int) -> int:
    return max(1, _BLOCK_VALUES // max(k, 1))


@dataclass(frozen=True)
class Mask:
    """Positions left out of every metric: padding (token id `padding_id`) and `positions`."""

    padding_id: int | None = None
    positions: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        return self.padding_id is not None or bool(self.positions)

    def describe(self) -> list[str]:
        out = []
        if self.padding_id is not None:
            out.append(f"padding keys and queries (token id {self.padding_id})")
        if self.positions:
            out.append(f"positions {', '.join(str(p) for p in self.positions)}")
        return out

    def resolved(self, lengths: Collection[int]) -> Mask:
        """This mask for sequences of `lengths` (the key lengths it will meet): every position
        checked against the shortest, duplicates collapsed, sorted. With one length, negative
        positions become the ones they count back to (-1 and length - 1 are one position);
        with several they stay negative (each length has its own last position), after the
        others."""
        if not self.positions or not lengths:
            return self
        shortest = min(lengths)
        outside = sorted({p for p in self.positions if not -shortest <= p < shortest})
        if outside:
            more = f" (and {len(outside) - 1:,} more)" if len(outside) > 1 else ""
            raise InvalidInputError(
                f"masked position {outside[0]}{more} is outside a sequence of {shortest} "
                f"positions: positions run from 0 to {shortest - 1} (or -{shortest} to -1 "
                "from the end)"
            )
        if len(set(lengths)) == 1:
            positions = sorted({p % shortest for p in self.positions})
        else:
            positions = sorted(set(self.positions), key=lambda p: (p < 0, p))
        return replace(self, positions=tuple(positions))

    def keep(self, batch: int, length: int, token_ids: np.ndarray | None) -> np.ndarray:
        """Bool (batch, length): the positions each item keeps."""
        keep = np.ones((batch, length), dtype=bool)
        if self.positions:
            keep[:, list(self.resolved([length]).positions)] = False
        if self.padding_id is not None:
            if token_ids is None:
                raise InvalidInputError(
                    "masking padding needs token ids: send integer token ids as the input "
                    "(or with sent attention, token_ids)"
                )
            ids = np.asarray(token_ids)
            if ids.shape != (batch, length):
                raise InvalidInputError(
                    f"token ids of shape {ids.shape} do not match attention over {length} "
                    f"positions with batch {batch}"
                )
            keep &= ids != self.padding_id
        return keep


def _masked_item(
    item: np.ndarray, keep: np.ndarray | None, should_stop: StopCheck = None
) -> np.ndarray | None:
    """One item's (heads, q, k), masked positions removed and rows renormalized; rows with no
    mass dropped. None when nothing is left. Unmasked square items pass through untouched.
    Copied a head at a time in float64, asking `should_stop` before each."""
    if keep is None:
        return item
    q, k = item.shape[-2:]
    keep_q = keep[:q] if q == k else np.ones(q, dtype=bool)
    rows_q, cols = np.flatnonzero(keep_q), np.flatnonzero(keep[:k])
    if len(rows_q) == 0 or len(cols) == 0 or item.shape[0] == 0:
        return None
    kept = np.empty((item.shape[0], len(rows_q), len(cols)))
    for h, head in enumerate(item):
        check_stop(should_stop)
        kept[h] = head[np.ix_(rows_q, cols)]
    sums = kept.sum(axis=-1, keepdims=True)
    rows = (sums > 0).all(axis=0)[:, 0]  # a row stays when every head has mass in it
    if not rows.any():
        return None
    if not rows.all():
        kept, sums = kept[:, rows], sums[:, rows]
    for h in range(len(kept)):
        check_stop(should_stop)
        kept[h] /= sums[h]
    return kept


def per_item_metrics(
    attention: np.ndarray, keep: np.ndarray | None = None, *, should_stop: StopCheck = None
) -> Iterator[dict[str, Any] | None]:
    """analyze_attention_patterns of each item (heads, q, k), masked by `keep` (batch, length);
    None for an item the mask leaves empty."""
    for b in range(attention.shape[0]):
        check_stop(should_stop)
        item = _masked_item(attention[b], None if keep is None else keep[b], should_stop)
        yield (
            None
            if item is None
            else dict(analyze_attention_patterns(item, should_stop=should_stop))
        )


def _empty_metrics(heads: int) -> dict[str, Any]:
    return analysis.record(
        heads,
        {m.key: ["mixed" if m.is_label else 0.0] * heads for m in analysis.METRICS},
    )


def flat_metrics(metrics: Mapping[str, Any], head: int) -> dict[str, float]:
    """One head's numbers of an analyze dict, named as in METRICS."""
    return {m.key: float(analysis.head_value(metrics, m, head)) for m in analysis.numbers()}


def masked_layer_metrics(
    attention: np.ndarray, keep: np.ndarray | None = None, *, should_stop: StopCheck = None
) -> dict[str, Any]:
    """layer_metrics of (batch, heads, q, k), with masked positions removed when `keep` is given.

    Unmasked, it is exactly `layer_metrics`. Masked items that keep the same shape are stacked
    and go through `layer_metrics` too; items of different lengths (padding) are analysed one by
    one, their numbers averaged and each head labelled by the most common of its item labels.
    """
    shape = [int(n) for n in attention.shape]
    if keep is None:
        return dict(layer_metrics(attention, should_stop=should_stop))
    items = []
    for b in range(attention.shape[0]):
        check_stop(should_stop)
        if (item := _masked_item(attention[b], keep[b], should_stop)) is not None:
            items.append(item)
    heads = shape[1]
    if not items:
        metrics = _empty_metrics(heads)
    elif len({item.shape for item in items}) == 1:
        metrics = dict(layer_metrics(np.stack(items), should_stop=should_stop))
    else:
        metrics = _average(
            [dict(analyze_attention_patterns(item, should_stop=should_stop)) for item in items],
            heads,
        )
    metrics["shape"] = shape
    metrics["items_analyzed"] = len(items)
    return metrics


def _average(results: Sequence[dict[str, Any]], heads: int) -> dict[str, Any]:
    """The record of several items' records: numbers averaged, each label the most common."""
    per_head: dict[str, list[Any]] = {}
    for m in analysis.METRICS:
        if m.is_label:
            per_head[m.key] = [_most_common([r[m.key][h] for r in results]) for h in range(heads)]
        elif m.stat is not None:
            per_head[m.key] = [
                float(np.mean([analysis.head_value(r, m, h) for r in results]))
                for h in range(heads)
            ]
        else:
            per_head[m.key] = [float(v) for v in np.mean([r[m.key] for r in results], axis=0)]
    return analysis.record(heads, per_head)


def _most_common(labels: Sequence[str]) -> str:
    counts = Counter(labels)
    return max(PATTERN_LABELS, key=lambda label: (counts[label], -PATTERN_LABELS.index(label)))


# -- sanity -------------------------------------------------------------------------------------
@dataclass
class Sanity:
    """What a result's attention looked like before any metric: folded in layer by layer."""

    dtype: str = ""
    rows: int = 0
    fully_masked_rows: int = 0
    max_row_error: float = 0.0
    finite: bool = True
    tolerance: float = row_tolerance(np.float32)

    def add(self, attention: np.ndarray, *, should_stop: StopCheck = None) -> None:
        arr = np.asarray(attention)
        self.dtype = str(arr.dtype)
        self.tolerance = max(self.tolerance, row_tolerance(arr.dtype))
        rows = arr.reshape(-1, arr.shape[-1]) if arr.size else arr.reshape(0, 1)
        step = _block_rows(rows.shape[1])
        for start in range(0, rows.shape[0], step):
            check_stop(should_stop)
            block = np.asarray(rows[start : start + step], dtype=np.float64)
            if not np.isfinite(block).all():
                self.finite = False
                block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
            sums = block.sum(axis=-1)
            empty = sums == 0.0
            self.rows += int(sums.size)
            self.fully_masked_rows += int(empty.sum())
            if (~empty).any():
                self.max_row_error = max(
                    self.max_row_error, float(np.abs(sums[~empty] - 1.0).max())
                )

    def result(self) -> dict[str, Any]:
        return {
            "rows_sum_to_one": self.finite and self.max_row_error <= self.tolerance,
            "max_row_error": self.max_row_error,
            "tolerance": self.tolerance,
            "finite": self.finite,
            "rows": self.rows,
            "fully_masked_rows": self.fully_masked_rows,
            "dtype": self.dtype,
        }


# -- Jensen-Shannon -----------------------------------------------------------------------------
def _xlog2(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    out = np.zeros_like(p)
    np.log2(p / np.where(m > 0, m, 1.0), out=out, where=p > 0)
    return p * out


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence, log base 2 (in [0, 1]), of rows over the last axis."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)
    js = 0.5 * _xlog2(p, m).sum(axis=-1) + 0.5 * _xlog2(q, m).sum(axis=-1)
    return np.clip(js, 0.0, 1.0)


def _distance_sums(
    a: np.ndarray, b: np.ndarray, should_stop: StopCheck = None
) -> tuple[float, float, int]:
    """Sums over rows with mass in both of JS distance and divergence, and the row count.
    `a`, `b`: (..., q, k) of one head each, the same shape."""
    ra = a.reshape(-1, a.shape[-1])
    rb = b.reshape(-1, b.shape[-1])
    distance = divergence = 0.0
    count = 0
    step = _block_rows(ra.shape[1])
    for start in range(0, ra.shape[0], step):
        if start:  # the caller asks before each head pair; blocks after the first ask here
            check_stop(should_stop)
        pa = np.asarray(ra[start : start + step], dtype=np.float64)
        pb = np.asarray(rb[start : start + step], dtype=np.float64)
        sa, sb = pa.sum(axis=-1), pb.sum(axis=-1)
        both = (sa > 0) & (sb > 0)
        if not both.any():
            continue
        js = js_divergence(pa[both] / sa[both, None], pb[both] / sb[both, None])
        distance += float(np.sqrt(js).sum())
        divergence += float(js.sum())
        count += int(both.sum())
    return distance, divergence, count


def head_distance(a: np.ndarray, b: np.ndarray, *, should_stop: StopCheck = None) -> float:
    """Mean JS distance between two heads' rows; (q, k) or (batch, q, k), the same shape."""
    if a.shape != b.shape:
        raise InvalidInputError(f"heads of shapes {a.shape} and {b.shape} cannot be compared")
    distance, _, count = _distance_sums(a, b, should_stop)
    return distance / count if count else 0.0


def mask_heads(
    attention: np.ndarray, keep: np.ndarray | None, *, should_stop: StopCheck = None
) -> np.ndarray:
    """(batch, heads, q, k) with masked keys zeroed and rows renormalized (masked queries
    zeroed): the same shape, so heads of different layers still line up. Made a block of
    rows of one head at a time."""
    if keep is None:
        return attention
    batch, heads, q, k = attention.shape
    out = np.zeros(attention.shape, dtype=np.float64)
    step = _block_rows(k)
    for b in range(batch):
        keys = keep[b, :k]
        for h in range(heads):
            for start in range(0, q, step):
                check_stop(should_stop)
                rows = np.asarray(attention[b, h, start : start + step], dtype=np.float64)
                rows = rows * keys
                if q == k:
                    rows *= keep[b, start : start + step, None]
                sums = rows.sum(axis=-1, keepdims=True)
                np.divide(rows, sums, out=out[b, h, start : start + step], where=sums > 0)
    return out


def similarity_cost(layer_shapes: Sequence[tuple[int, int, int, int]]) -> tuple[int, int]:
    """(pairs, values) that `similarity` of layers of these (batch, heads, q, k) shapes
    compares: the pairs of heads of one (batch, q, k) shape (others are not comparable), and
    over those pairs the values of one head (pairs x values per head). Known from the shapes,
    before any attention exists."""
    counts: Counter[tuple[int, int, int]] = Counter()
    for batch, heads, q, k in layer_shapes:
        counts[(int(batch), int(q), int(k))] += int(heads)
    pairs = values = 0
    for shape, n in counts.items():
        together = n * (n - 1) // 2
        pairs += together
        values += together * math.prod(shape)
    return pairs, values


def similarity(
    layers: Mapping[str, np.ndarray],
    *,
    keep: np.ndarray | None = None,
    threshold: float = DEFAULT_REDUNDANCY_THRESHOLD,
    should_stop: StopCheck = None,
) -> dict[str, Any]:
    """JS distance between every pair of heads, within and across layers, and redundant groups.

    Returns ``{"heads": [{"layer", "head"}...], "distance": n x n list (-1 where two heads'
    shapes differ), "pairs": [{"a", "b", "distance", "same_layer"}...] closest first,
    "groups": [[head index, ...], ...], "threshold"}``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(
            f"the redundancy threshold is a JS distance in [0, 1]; got {threshold}"
        )
    heads: list[tuple[str, int, np.ndarray]] = []
    for name, attention in layers.items():
        arr = mask_heads(np.asarray(attention), keep, should_stop=should_stop)
        heads.extend((name, h, arr[:, h]) for h in range(arr.shape[1]))
    n = len(heads)
    matrix = np.zeros((n, n))
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            a, b = heads[i][2], heads[j][2]
            if a.shape != b.shape:
                d = -1.0
            else:
                check_stop(should_stop)
                d = head_distance(a, b, should_stop=should_stop)
            matrix[i, j] = matrix[j, i] = d
            if d >= 0:
                pairs.append(
                    {"a": i, "b": j, "distance": d, "same_layer": heads[i][0] == heads[j][0]}
                )
    pairs.sort(key=lambda p: p["distance"])
    return {
        "heads": [{"layer": name, "head": h} for name, h, _ in heads],
        "distance": matrix.tolist(),
        "pairs": pairs,
        "groups": redundant_groups(matrix, threshold),
        "threshold": threshold,
    }


def redundant_groups(distance: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected groups (2 heads or more) of heads linked at distance <= threshold."""
    n = len(distance)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if 0 <= distance[i][j] <= threshold:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


# -- profiles -----------------------------------------------------------------------------------
@dataclass
class _Stat:
    """Running mean/variance (Welford) and a bounded reservoir for quantiles."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    values: list[float] = field(default_factory=list)

    def add(self, value: float, rng: np.random.Generator) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        if len(self.values) < RESERVOIR_SIZE:
            self.values.append(value)
        else:
            slot = int(rng.integers(0, self.count))
            if slot < RESERVOIR_SIZE:
                self.values[slot] = value

    def result(self) -> dict[str, Any]:
        if not self.count:
            return {"mean": 0.0, "std": 0.0, "quantiles": {str(q): 0.0 for q in QUANTILES}}
        qs = np.quantile(np.asarray(self.values), QUANTILES)
        return {
            "mean": self.mean,
            "std": math.sqrt(self.m2 / self.count),
            "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, qs, strict=True)},
        }


class Profile:
    """Per head, the distribution over samples of every metric and the share of each label.

    ``add(layer, attention, keep)`` per batch (any number of batches); memory is bounded by
    heads x metrics x RESERVOIR_SIZE, whatever the number of samples. ``std`` is the population
    standard deviation; quantiles are numpy's linear ones, exact while a head has at most
    RESERVOIR_SIZE samples and estimated from a uniform sample beyond. Every head seen is in
    the result: one whose every sample the mask left empty has 0 samples and all-zero numbers.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        self._stats: dict[tuple[str, int], dict[str, _Stat]] = {}
        self._labels: dict[tuple[str, int], Counter[str]] = {}
        self._skipped: Counter[str] = Counter()
        self.samples = 0

    def add(
        self,
        layer: str,
        attention: np.ndarray,
        keep: np.ndarray | None = None,
        *,
        should_stop: StopCheck = None,
    ) -> None:
        for h in range(attention.shape[1]):
            self._stats.setdefault((layer, h), {name: _Stat() for name in metric_names()})
            self._labels.setdefault((layer, h), Counter())
        for metrics in per_item_metrics(attention, keep, should_stop=should_stop):
            if metrics is None:
                self._skipped[layer] += 1
                continue
            for h in range(metrics["num_heads"]):
                stats = self._stats[(layer, h)]
                for name, value in flat_metrics(metrics, h).items():
                    stats[name].add(value, self._rng)
                self._labels[(layer, h)][metrics["pattern_per_head"][h]] += 1

    def result(self) -> dict[str, Any]:
        """``{"layers": {layer: [{"head", "samples", "metrics": {name: {"mean", "std",
        "quantiles"}}, "labels": {label: share}}, ...]}, "exact_quantiles"}``"""
        layers: dict[str, list[dict[str, Any]]] = {}
        exact = True
        for (layer, head), stats in self._stats.items():
            count = next(iter(stats.values())).count
            exact &= count <= RESERVOIR_SIZE
            labels = self._labels[(layer, head)]
            layers.setdefault(layer, []).append(
                {
                    "head": head,
                    "samples": count,
                    "metrics": {name: stat.result() for name, stat in stats.items()},
                    "labels": {
                        label: labels[label] / count if count else 0.0 for label in PATTERN_LABELS
                    },
                }
            )
        return {
            "layers": layers,
            "exact_quantiles": exact,
            "samples_left_empty_by_mask": dict(self._skipped),
        }


# -- comparison ---------------------------------------------------------------------------------
def compare_layer(
    name: str,
    a: np.ndarray,
    b: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    should_stop: StopCheck = None,
) -> list[dict[str, Any]]:
    """Per head of one layer seen in two runs (same inputs): metric deltas b - a and JS.

    Each row: ``{"layer", "head", "js_distance", "js_divergence", "label_a", "label_b",
    "a": {metric: value}, "b": {...}, "delta": {...}}``; heads are matched by index.
    """
    if a.shape != b.shape:
        raise InvalidInputError(
            f"`{name}` has attention of shape {a.shape} in one model and {b.shape} in the other"
        )
    ma = masked_layer_metrics(a, keep, should_stop=should_stop)
    mb = masked_layer_metrics(b, keep, should_stop=should_stop)
    xa = mask_heads(a, keep, should_stop=should_stop)
    xb = mask_heads(b, keep, should_stop=should_stop)
    rows = []
    for h in range(a.shape[1]):
        check_stop(should_stop)
        distance, divergence, count = _distance_sums(xa[:, h], xb[:, h], should_stop)
        fa, fb = flat_metrics(ma, h), flat_metrics(mb, h)
        rows.append(
            {
                "layer": name,
                "head": h,
                "js_distance": distance / count if count else 0.0,
                "js_divergence": divergence / count if count else 0.0,
                "label_a": ma["pattern_per_head"][h],
                "label_b": mb["pattern_per_head"][h],
                "a": fa,
                "b": fb,
                "delta": {m: fb[m] - fa[m] for m in fa},
            }
        )
    return rows
