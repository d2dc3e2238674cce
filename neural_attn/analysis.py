"""Attention metrics: the feature document's per-head numbers, a pattern label, and rollout.

Shared by the thin client and the server, so it imports numpy and the standard library only.
Attention is softmax probabilities of shape ``[batch, head, query_pos, key_pos]``: rows sum to 1
and masked keys are exactly 0. Every result is plain Python (floats, ints, lists, dicts) so it
goes straight into ``json.dumps`` (it is the content of ``analysis.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from neural_attn.errors import InvalidInputError

__all__ = [
    "PATTERN_LABELS",
    "analyze_attention_patterns",
    "attention_rollout",
    "summarize_layers",
]

PATTERN_LABELS = ("local", "global", "prefix_suffix", "sparse", "mixed")

# Thresholds of the pattern rule (see analyze_attention_patterns).
GLOBAL_MIN_NORMALIZED_ENTROPY = 0.9
LOCAL_MIN_WINDOW_MASS = 0.7
LOCAL_MIN_DIAGONAL_STRENGTH = 2.0
LOCAL_MAX_NORMALIZED_ENTROPY = 0.5
PREFIX_SUFFIX_MIN_EDGE_MASS = 0.6
SPARSE_MAX_NORMALIZED_ENTROPY = 0.5

# float16 on the wire and float32 softmax can leave values a hair below 0; further is an error.
_NEGATIVE_TOLERANCE = 1e-6

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
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(
            f"attention of shape {tuple(arr.shape)} holds NaN or infinite values; "
            "expected softmax probabilities (finite, rows summing to 1)"
        )
    if arr.min() < -_NEGATIVE_TOLERANCE:
        raise InvalidInputError(
            f"attention of shape {tuple(arr.shape)} holds negative values "
            f"(min {float(arr.min()):.3g}); expected softmax probabilities, not raw scores"
        )
    return arr


def _to_4d(arr: np.ndarray) -> np.ndarray:
    """(q, k) -> (1, 1, q, k); (h, q, k) -> (1, h, q, k); (b, h, q, k) unchanged."""
    while arr.ndim < 4:
        arr = arr[np.newaxis]
    return arr


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def analyze_attention_patterns(attention: Any) -> dict[str, Any]:
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
         edge mass ``>= 0.6`` (vertical bands on the first / last keys);
      4. ``"local"``: window mass ``>= 0.7``, or diagonal strength ``>= max(2, k / 2)`` (on
         average at least half of a row's mass on its own position) with ``H <= 0.5``;
      5. ``"sparse"``: ``H <= 0.5`` (focused, but on spots off the diagonal and the edges);
      6. ``"mixed"`` otherwise.
    """
    arr = _to_4d(_as_probabilities(attention))
    _, heads, _, k = arr.shape
    # One batch item at a time keeps the float64 temporaries small for long sequences.
    per_item = [_item_metrics(item) for item in arr]
    m = {name: np.mean([item[name] for item in per_item], axis=0) for name in per_item[0]}

    norm_entropy = m["entropy"] / math.log(k) if k > 1 else np.zeros(heads)
    edge = max(1, k // 20)
    labels = [
        _pattern_label(
            k=k,
            normalized_entropy=float(norm_entropy[h]),
            diagonal_strength=float(m["diagonal"][h]),
            window_mass=float(m["window_mass"][h]),
            edge_mass=float(m["edge_mass"][h]),
            edges_small=k >= 4 * edge,
        )
        for h in range(heads)
    ]
    distribution = [
        {stat: float(m[stat][h]) for stat in ("mean", "std", "min", "max")} for h in range(heads)
    ]
    return {
        "num_heads": int(heads),
        "attention_entropy": _floats(m["entropy"]),
        "max_attention_per_head": _floats(m["row_max"]),
        "attention_distribution": distribution,
        "diagonal_attention_strength": _floats(m["diagonal"]),
        "avg_entropy": float(m["entropy"].mean()),
        "avg_max_attention": float(m["row_max"].mean()),
        "avg_diagonal_strength": float(m["diagonal"].mean()),
        "pattern_per_head": labels,
        "mean_attention_distance": _floats(m["distance"]),
        "normalized_entropy": _floats(norm_entropy),
    }


def _item_metrics(item: np.ndarray) -> dict[str, np.ndarray]:
    """Per-head numbers of one batch item ``(heads, q, k)``; every value has shape (heads,)."""
    p = np.clip(item.astype(np.float64), 0.0, None)
    _, q, k = p.shape
    positive = p > 0
    plogp = np.zeros_like(p)
    np.multiply(p, np.log(p, where=positive, out=np.ones_like(p)), where=positive, out=plogp)

    n_diag = min(q, k)
    diag = p[:, np.arange(n_diag), np.arange(n_diag)].mean(axis=-1)
    matrix_mean = p.mean(axis=(-2, -1))
    distance = np.abs(np.arange(q)[:, None] - np.arange(k)[None, :])
    edge = max(1, k // 20)
    edge_cols = np.zeros(k, dtype=bool)
    edge_cols[:edge] = True
    edge_cols[-edge:] = True
    return {
        "entropy": -plogp.sum(axis=-1).mean(axis=-1),
        "row_max": p.max(axis=-1).mean(axis=-1),
        "diagonal": np.divide(diag, matrix_mean, out=np.zeros_like(diag), where=matrix_mean > 0),
        "distance": (p * distance).sum(axis=-1).mean(axis=-1),
        "window_mass": (p * (distance <= max(1, k // 10))).sum(axis=-1).mean(axis=-1),
        "edge_mass": p[..., edge_cols].sum(axis=-1).mean(axis=-1),
        "mean": matrix_mean,
        "std": p.std(axis=(-2, -1)),
        "min": p.min(axis=(-2, -1)),
        "max": p.max(axis=(-2, -1)),
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


def attention_rollout(layers: Sequence[Any], *, add_residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020) through the layers of one batch item.

    Args:
        layers: one ``(heads, n, n)`` (or ``(n, n)``) attention per layer, first layer first,
            all square and of the same ``n``.
        add_residual: model the residual connection: each head-averaged matrix becomes
            ``A + I`` with its rows renormalized to sum to 1.

    Returns:
        ``R = A_L @ ... @ A_1``, an ``(n, n)`` float64 array: how much each output position
        draws on each input position through the whole stack.
    """
    if len(layers) == 0:
        raise InvalidInputError("attention_rollout needs at least one layer's attention")
    result: np.ndarray | None = None
    size: int | None = None
    for index, layer in enumerate(layers):
        arr = np.clip(_as_probabilities(layer, max_rank=3).astype(np.float64), 0.0, None)
        if arr.shape[-1] != arr.shape[-2]:
            raise InvalidInputError(
                f"rollout layer {index} has shape {tuple(arr.shape)}; rollout needs square "
                "self-attention (heads, n, n) of one batch item"
            )
        if size is not None and arr.shape[-1] != size:
            raise InvalidInputError(
                f"rollout layer {index} has size {arr.shape[-1]} but layer 0 has {size}; "
                "every layer needs the same (heads, n, n) shape"
            )
        size = arr.shape[-1]
        mixed = arr if arr.ndim == 2 else arr.mean(axis=0)
        if add_residual:
            mixed = mixed + np.eye(size)
            mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        result = mixed if result is None else mixed @ result
    assert result is not None
    return result


def _first_item(arr: np.ndarray) -> np.ndarray:
    """Batch item 0 of a (batch, heads, q, k) tensor; lower ranks are one item already."""
    return arr[0] if arr.ndim == 4 else arr


def summarize_layers(attention_by_layer: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``analysis.json``: metrics per layer and, where it applies, the rollout.

    Returns ``{"layers": {name: metrics + {"shape": [...]}}}`` plus ``"rollout"`` (a list of
    rows, batch item 0, layers in the mapping's order) when every layer is square and of
    the same size.
    """
    layers: dict[str, Any] = {}
    items: list[np.ndarray] = []
    for name, attention in attention_by_layer.items():
        arr = _as_probabilities(attention)
        metrics = analyze_attention_patterns(arr)
        metrics["shape"] = [int(n) for n in arr.shape]
        layers[name] = metrics
        items.append(_first_item(arr))
    summary: dict[str, Any] = {"layers": layers}
    sizes = {item.shape[-2:] for item in items}
    if items and len(sizes) == 1:
        q, k = next(iter(sizes))
        if q == k:
            summary["rollout"] = attention_rollout(items).tolist()
    return summary
