"""Metrics and rollout fed in tiles of query rows equal independent whole-layer references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neural_attn import analysis
from neural_attn.analysis import (
    LayerAccumulator,
    Rollout,
    attention_rollout,
    layer_metrics,
    summarize_layers,
)
from neural_attn.errors import CancelledError, InvalidInputError
from neural_attn.pooling import Pooling


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
        size = attention.shape[0] * heads * k * block_rows  # rows of every head at once
        monkeypatch.setattr(analysis, "_METRIC_BLOCK_ELEMENTS", size)
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

    # The same sums as the whole layer's, in float32 rows added in another order.
    whole = layer_metrics(attention)
    assert got["pattern_per_head"] == whole["pattern_per_head"]
    assert got.keys() == whole.keys()
    for key, value in whole.items():
        if key == "attention_distribution":
            for mine, theirs in zip(got[key], value, strict=True):
                for stat in theirs:
                    assert mine[stat] == pytest.approx(theirs[stat], rel=1e-7, abs=1e-12)
        elif key in ("pattern_per_head", "shape", "num_heads"):
            assert got[key] == value
        elif isinstance(value, list):
            np.testing.assert_allclose(got[key], value, rtol=1e-7, atol=1e-12)
        else:
            assert got[key] == pytest.approx(value, rel=1e-7, abs=1e-12)


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
        rtol=1e-7,
    )
    with pytest.raises(InvalidInputError, match="shape"):
        LayerAccumulator((2, 3, 37))
    with pytest.raises(InvalidInputError, match="shape"):
        LayerAccumulator((2, 0, 37, 37))


# -- rollout ------------------------------------------------------------------------------------


def _head_mean(layer: np.ndarray) -> np.ndarray:
    return layer[0].astype(np.float64).mean(axis=0)


def _residual(a: np.ndarray) -> np.ndarray:
    a = a + np.eye(len(a))
    return a / a.sum(axis=1, keepdims=True)


def _product(matrices: list[np.ndarray]) -> np.ndarray:
    result = matrices[0]
    for a in matrices[1:]:
        result = a @ result
    return result


def _pooled(a: np.ndarray, size: int) -> np.ndarray:
    """Â[I, J] = (1 / |I|) sum over rows i of I and columns j of J of a[i, j], blocks of
    ceil(n / size) positions, the last one partial."""
    n = len(a)
    block = -(-n // size) if n > size else 1
    cells = -(-n // block)
    member = np.zeros((cells, n))
    member[np.arange(n) // block, np.arange(n)] = 1.0
    return (member @ a @ member.T) / member.sum(axis=1, keepdims=True)


def _layers(n: int, count: int = 3, seed: int = 5, dtype: type = np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    layers = [_stochastic(rng, (2, 3, n, n)).astype(dtype) for _ in range(count - 1)]
    layers.append(_causal(rng, 2, 3, n).astype(dtype))
    return layers


def _tiled_rollout(layers: list[np.ndarray], seed: int, **kwargs: bool) -> Rollout:
    rollout = Rollout(**kwargs)
    rng = np.random.default_rng(seed)
    for layer in layers:
        n = layer.shape[-1]
        rollout.begin(n)
        for start, stop in _tiles(n, rng):
            rollout.add_rows(start, layer[:, :, start:stop])
        rollout.end()
    return rollout


@pytest.mark.parametrize("block_rows", [None, 3])
@pytest.mark.parametrize("n", [37, 50])
def test_exact_rollout_from_tiles_is_the_product_of_the_head_means(
    n: int, block_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analysis, "ROLLOUT_EXACT_MAX", n)  # n itself is still exact
    if block_rows is not None:
        monkeypatch.setattr(analysis, "_BLOCK_BYTES", 8 * n * block_rows)
    layers = _layers(n)
    expected = _product([_residual(_head_mean(layer)) for layer in layers])
    for seed in (1, 2):
        rollout = _tiled_rollout(layers, seed)
        assert rollout.pooling is None and rollout.problem is None
        result = rollout.result()
        assert result is not None and result.shape == (n, n) and result.dtype == np.float64
        np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-12)
    whole = Rollout()
    for layer in layers:
        whole.add(layer)
    np.testing.assert_allclose(whole.result(), expected, rtol=1e-9, atol=1e-12)
    summary = summarize_layers({str(i): a for i, a in enumerate(layers)}, rollout_as_list=False)
    np.testing.assert_allclose(summary["rollout"], expected, rtol=1e-9, atol=1e-12)
    assert "rollout_pooling" not in summary


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("add_residual", [True, False])
@pytest.mark.parametrize("block_rows", [None, 3])
@pytest.mark.parametrize("n", [37, 50])
def test_pooled_rollout_is_the_product_of_the_pooled_head_means(
    n: int,
    block_rows: int | None,
    add_residual: bool,
    dtype: type,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = 8
    monkeypatch.setattr(analysis, "ROLLOUT_EXACT_MAX", n - 1)
    monkeypatch.setattr(analysis, "ROLLOUT_POOLED_SIZE", size)
    if block_rows is not None:  # blocks of rows that straddle the pooled cells
        monkeypatch.setattr(analysis, "_BLOCK_BYTES", 8 * n * block_rows)
    layers = _layers(n, seed=n, dtype=dtype)
    pooled = [_pooled(_head_mean(layer), size) for layer in layers]
    if add_residual:
        pooled = [_residual(a) for a in pooled]
    expected = _product(pooled)
    block = -(-n // size)
    cells = -(-n // block)
    # float32 layers: their heads are summed in float32 (8 terms, about 1e-7 of each cell)
    close = {"rtol": 1e-9 if dtype == np.float64 else 1e-6, "atol": 1e-12}
    for seed in (3, 4):
        rollout = _tiled_rollout(layers, seed, add_residual=add_residual)
        result = rollout.result()
        assert result is not None and result.shape == (cells, cells)
        np.testing.assert_allclose(result, expected, **close)
        # Rows sum to 1 as the layers' rows do (float32 rows: to about 1e-7 each).
        np.testing.assert_allclose(
            result.sum(axis=1), 1.0, rtol=1e-9 if add_residual or dtype == np.float64 else 1e-6
        )
        assert rollout.pooling == {
            "size": n,
            "pooled_size": cells,
            "block": block,
            "method": "mean over query rows, sum over key columns",
        }
        # The display pooling's blocks for the same length and target.
        assert Pooling.of((n, n), size, "mean").query_block == block
    if add_residual:
        summary = summarize_layers({str(i): a for i, a in enumerate(layers)})
        np.testing.assert_allclose(summary["rollout"], expected, **close)
        assert summary["rollout_pooling"]["pooled_size"] == cells
        np.testing.assert_allclose(attention_rollout([a[0] for a in layers]), expected, **close)


def test_pooled_residual_is_the_pooling_of_the_exact_residual(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One layer: the pooled rollout is the pooled A + I, renormalized.
    n, size = 37, 8
    monkeypatch.setattr(analysis, "ROLLOUT_EXACT_MAX", 10)
    monkeypatch.setattr(analysis, "ROLLOUT_POOLED_SIZE", size)
    layer = _layers(n, count=1, dtype=np.float64)[0]  # rows summing to 1 to float64 rounding
    a = _head_mean(layer)
    rollout = _tiled_rollout([layer], seed=9)
    np.testing.assert_allclose(rollout.result(), _pooled(_residual(a), size), rtol=1e-9, atol=1e-12)


def test_rollout_problems_and_tile_errors() -> None:
    square = _layers(6, count=1)[0]
    cross = Rollout()
    cross.begin(6, queries=4)
    cross.add_rows(0, square[:, :, :4])  # ignored: the layer ruled the rollout out
    cross.end()
    assert cross.result() is None and "square" in (cross.problem or "")
    sizes = Rollout()
    sizes.add(square)
    sizes.begin(7)
    sizes.end()
    sizes.add(square)  # a later fitting layer does not bring it back
    assert sizes.result() is None and "layer 0 has 6" in (sizes.problem or "")

    rollout = Rollout()
    with pytest.raises(InvalidInputError, match="begin"):
        rollout.add_rows(0, square)
    with pytest.raises(InvalidInputError, match="begin"):
        rollout.end()
    rollout.begin(6)
    with pytest.raises(InvalidInputError, match="end"):
        rollout.begin(6)
    rollout.add_rows(0, square[:, :, :3])
    with pytest.raises(InvalidInputError, match="overlaps"):
        rollout.add_rows(2, square[:, :, 2:4])
    with pytest.raises(InvalidInputError, match="outside"):
        rollout.add_rows(5, square[:, :, 3:5])
    with pytest.raises(InvalidInputError, match="shape"):
        rollout.add_rows(3, square[:, :, 3:, :5])
    with pytest.raises(InvalidInputError, match="heads"):
        rollout.add_rows(3, square[:, :2, 3:])
    with pytest.raises(InvalidInputError, match="never added"):
        rollout.end()
    assert rollout.result() is None and "never added" in (rollout.problem or "")


def test_a_stopped_tile_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    attention = _cases()["square"]
    monkeypatch.setattr(analysis, "_METRIC_BLOCK_ELEMENTS", 2 * 3 * 37 * 4)  # blocks of 4 rows
    asked: list[int] = []

    def stop_on_the_third_block() -> bool:
        asked.append(1)
        return len(asked) == 3

    accumulator = LayerAccumulator(attention.shape)
    with pytest.raises(CancelledError):
        accumulator.add(0, attention[:, :, :20], should_stop=stop_on_the_third_block)
    accumulator.add(0, attention[:, :, :20], should_stop=stop_on_the_third_block)
    accumulator.add(20, attention[:, :, 20:])
    np.testing.assert_allclose(
        accumulator.result()["attention_entropy"],
        layer_metrics(attention)["attention_entropy"],
        rtol=1e-7,
    )
