"""Metrics and rollout fed in tiles of query rows equal independent whole-layer references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neural_attn import analysis
from neural_attn.analysis import LayerAccumulator, layer_metrics
from neural_attn.errors import InvalidInputError


def _stochastic(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 2.0) -> np.ndarray:
    logits = rng.normal(size=shape) * scale
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


def _causal(rng: np.random.Generator, batch: int, heads: int, n: int) -> np.ndarray:
    weights = np.exp(rng.normal(size=(batch, heads, n, n)) * 2)
    weights *= np.tril(np.ones((n, n)))  # keys after the query are exactly 0
    return weights / weights.sum(axis=-1, keepdims=True)


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    return {
        "square": _stochastic(rng, (2, 3, 37, 37)).astype(np.float32),
        "wide": _stochastic(rng, (2, 3, 20, 50)).astype(np.float32),
        "causal": _causal(rng, 2, 3, 37).astype(np.float32),
        "float16": _stochastic(rng, (2, 2, 30, 30), scale=3.0).astype(np.float16),
    }


def _tiles(q: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Uneven [start, stop) row ranges covering 0..q, shuffled."""
    cuts = sorted(set(rng.choice(np.arange(1, q), size=min(q - 1, 6), replace=False).tolist()))
    edges = [0, *cuts, q]
    ranges = list(zip(edges[:-1], edges[1:], strict=True))
    rng.shuffle(ranges)
    return ranges


def _reference(attention: np.ndarray) -> dict[str, np.ndarray]:
    """Each head's numbers from the whole matrix in float64, averaged over the batch."""
    a = np.maximum(attention.astype(np.float64), 0.0)
    _, _, q, k = a.shape
    i = np.arange(q)[:, None]
    j = np.arange(k)[None, :]
    distance = np.abs(i - j).astype(np.float64)
    window = max(1, k // 10)
    edge = max(1, k // 20)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)
    n_diag = min(q, k)
    diag = a[..., np.arange(n_diag), np.arange(n_diag)].mean(axis=-1)
    mean = a.mean(axis=(-2, -1))
    edges = np.zeros(k, dtype=bool)
    edges[:edge] = True
    edges[k - edge :] = True
    per_item = {
        "entropy": -plogp.sum(axis=-1).mean(axis=-1),
        "row_max": a.max(axis=-1).mean(axis=-1),
        "diagonal": np.where(mean > 0, diag / np.where(mean > 0, mean, 1.0), 0.0),
        "distance": (a * distance).sum(axis=-1).mean(axis=-1),
        "window_mass": (a * (distance <= window)).sum(axis=-1).mean(axis=-1),
        "edge_mass": (a * edges).sum(axis=-1).mean(axis=-1),
        "mean": mean,
        "std": a.std(axis=(-2, -1)),
        "min": a.min(axis=(-2, -1)),
        "max": a.max(axis=(-2, -1)),
    }
    return {name: values.mean(axis=0) for name, values in per_item.items()}


def _accumulate(attention: np.ndarray, seed: int) -> LayerAccumulator:
    accumulator = LayerAccumulator(attention.shape)
    for start, stop in _tiles(attention.shape[2], np.random.default_rng(seed)):
        accumulator.add(start, attention[:, :, start:stop])
    return accumulator


@pytest.mark.parametrize("block_rows", [None, 2])
@pytest.mark.parametrize("case", list(_cases()))
def test_tiles_in_any_order_give_the_whole_layer_metrics(
    case: str, block_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    attention = _cases()[case]
    _, heads, q, k = attention.shape
    if block_rows is not None:  # several blocks within a tile
        monkeypatch.setattr(analysis, "_BLOCK_BYTES", 8 * k * block_rows)
    got = _accumulate(attention, seed=len(case)).result()
    ref = _reference(attention)
    close = {"rtol": 1e-6, "atol": 1e-12}
    np.testing.assert_allclose(got["attention_entropy"], ref["entropy"], **close)
    np.testing.assert_allclose(got["normalized_entropy"], ref["entropy"] / math.log(k), **close)
    np.testing.assert_allclose(got["max_attention_per_head"], ref["row_max"], **close)
    np.testing.assert_allclose(got["diagonal_attention_strength"], ref["diagonal"], **close)
    np.testing.assert_allclose(got["mean_attention_distance"], ref["distance"], **close)
    for stat in ("mean", "std", "min", "max"):
        values = [d[stat] for d in got["attention_distribution"]]
        np.testing.assert_allclose(values, ref[stat], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got["avg_entropy"], ref["entropy"].mean(), **close)
    assert got["num_heads"] == heads
    assert got["shape"] == list(attention.shape)

    whole = layer_metrics(attention)
    assert got["pattern_per_head"] == whole["pattern_per_head"]
    assert got.keys() == whole.keys()
    for key, value in whole.items():
        if key == "attention_distribution":
            for mine, theirs in zip(got[key], value, strict=True):
                for stat in theirs:
                    assert mine[stat] == pytest.approx(theirs[stat], rel=1e-12, abs=1e-15)
        elif key in ("pattern_per_head", "shape", "num_heads"):
            assert got[key] == value
        elif isinstance(value, list):
            np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-15)
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_one_tile_is_layer_metrics_exactly() -> None:
    attention = _cases()["causal"]
    accumulator = LayerAccumulator(attention.shape)
    accumulator.add(0, attention)
    assert accumulator.result() == layer_metrics(attention)


def test_a_tile_row_pattern_label_needs_window_mass_from_global_rows() -> None:
    # Identity attention is local only when each tile's rows are placed at their layer rows.
    n = 24
    attention = np.broadcast_to(np.eye(n), (1, 2, n, n)).copy()
    got = _accumulate(attention, seed=3).result()
    assert got["pattern_per_head"] == layer_metrics(attention)["pattern_per_head"]
    assert got["mean_attention_distance"] == [0.0, 0.0]
    assert got["diagonal_attention_strength"] == pytest.approx([n, n])


def test_missing_overlapping_and_misshapen_tiles_are_refused() -> None:
    attention = _cases()["square"]
    accumulator = LayerAccumulator(attention.shape)
    accumulator.add(0, attention[:, :, :10])
    with pytest.raises(InvalidInputError, match="never added"):
        accumulator.result()
    with pytest.raises(InvalidInputError, match="overlaps"):
        accumulator.add(5, attention[:, :, 5:15])
    with pytest.raises(InvalidInputError, match="outside"):
        accumulator.add(30, attention[:, :, 20:37])
    with pytest.raises(InvalidInputError, match="outside"):
        accumulator.add(-1, attention[:, :, :3])
    with pytest.raises(InvalidInputError, match="shape"):
        accumulator.add(10, attention[:, :2, 10:20])
    with pytest.raises(InvalidInputError, match="shape"):
        accumulator.add(10, attention[0, :, 10:20])
    with pytest.raises(InvalidInputError, match="shape"):
        accumulator.add(10, attention[:, :, 10:20, :30])
    with pytest.raises(InvalidInputError, match="dtype"):
        accumulator.add(10, (attention[:, :, 10:20] > 0).astype(np.int32))
    with pytest.raises(InvalidInputError, match="negative"):
        accumulator.add(10, -attention[:, :, 10:20])
    bad = attention[:, :, 10:20].copy()
    bad[1, 2, 3, 4] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        accumulator.add(10, bad)
    # Refused tiles added nothing: the rest of the layer still completes it.
    accumulator.add(10, attention[:, :, 10:])
    np.testing.assert_allclose(
        accumulator.result()["attention_entropy"],
        layer_metrics(attention)["attention_entropy"],
        rtol=1e-12,
    )
    with pytest.raises(InvalidInputError, match="shape"):
        LayerAccumulator((2, 3, 37))
    with pytest.raises(InvalidInputError, match="shape"):
        LayerAccumulator((2, 0, 37, 37))
