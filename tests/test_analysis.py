"""Attention metrics checked against numbers worked out independently (by hand or plain loops)."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neural_attn import analysis
from neural_attn.analysis import (
    Rollout,
    analyze_attention_patterns,
    attention_rollout,
    layer_metrics,
    summarize_layers,
)
from neural_attn.errors import InvalidInputError


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _uniform(k: int, *, heads: int = 2, q: int | None = None) -> np.ndarray:
    return np.full((1, heads, q or k, k), 1.0 / k)


def test_uniform_attention_is_global_with_maximal_entropy() -> None:
    k = 8
    result = analyze_attention_patterns(_uniform(k, heads=3))
    assert result["num_heads"] == 3
    assert result["attention_entropy"] == pytest.approx([math.log(k)] * 3)
    assert result["normalized_entropy"] == pytest.approx([1.0] * 3)
    assert result["max_attention_per_head"] == pytest.approx([1 / k] * 3)
    assert result["diagonal_attention_strength"] == pytest.approx([1.0] * 3)
    assert result["pattern_per_head"] == ["global"] * 3
    assert result["avg_entropy"] == pytest.approx(math.log(k))
    assert result["avg_max_attention"] == pytest.approx(1 / k)
    assert result["avg_diagonal_strength"] == pytest.approx(1.0)
    dist = result["attention_distribution"][0]
    assert dist == pytest.approx({"mean": 1 / k, "std": 0.0, "min": 1 / k, "max": 1 / k})
    # Row i pays 1/k to every key j: mean distance is the mean over i of sum_j |i-j| / k.
    expected = np.mean([sum(abs(i - j) for j in range(k)) / k for i in range(k)])
    assert result["mean_attention_distance"] == pytest.approx([expected] * 3)


def test_identity_attention_is_local_and_fully_focused() -> None:
    k = 10
    result = analyze_attention_patterns(np.eye(k)[None])
    assert result["num_heads"] == 1
    assert result["attention_entropy"] == [0.0]
    assert result["max_attention_per_head"] == pytest.approx([1.0])
    # Mean of the diagonal is 1, mean of the matrix is 1/k.
    assert result["diagonal_attention_strength"] == pytest.approx([float(k)])
    assert result["mean_attention_distance"] == pytest.approx([0.0])
    assert result["pattern_per_head"] == ["local"]
    dist = result["attention_distribution"][0]
    assert dist["mean"] == pytest.approx(1 / k)
    assert dist["std"] == pytest.approx(math.sqrt(1 / k - 1 / k**2))
    assert (dist["min"], dist["max"]) == (0.0, 1.0)


def test_banded_attention_is_local() -> None:
    k = 12
    att = np.zeros((k, k))
    for i in range(k):
        for j in (i - 1, i, i + 1):
            if 0 <= j < k:
                att[i, j] = 1.0
    att /= att.sum(axis=-1, keepdims=True)
    assert analyze_attention_patterns(att)["pattern_per_head"] == ["local"]


def test_first_column_attention_is_prefix_suffix() -> None:
    k = 16
    att = np.zeros((2, k, k))
    att[0, :, 0] = 1.0  # every query looks at the first key (a CLS band)
    att[1, :, 0] = 0.5  # half on the first key, half on the last (CLS and SEP)
    att[1, :, -1] = 0.5
    result = analyze_attention_patterns(att)
    assert result["pattern_per_head"] == ["prefix_suffix", "prefix_suffix"]
    assert result["attention_entropy"] == pytest.approx([0.0, math.log(2)])
    # Diagonal holds one 1 (row 0) out of k: (1/k) / (1/k).
    assert result["diagonal_attention_strength"][0] == pytest.approx(1.0)


def test_off_diagonal_spots_are_sparse() -> None:
    k = 16
    att = np.zeros((k, k))
    att[np.arange(k), (np.arange(k) + k // 2) % k] = 1.0  # each row looks half a sequence away
    result = analyze_attention_patterns(att)
    assert result["pattern_per_head"] == ["sparse"]
    assert result["mean_attention_distance"] == pytest.approx([k / 2])


def test_pattern_labels_are_deterministic_and_known() -> None:
    rng = np.random.default_rng(7)
    att = _softmax(rng.normal(size=(2, 6, 20, 20)) * rng.uniform(0.1, 4.0, size=(1, 6, 1, 1)))
    first = analyze_attention_patterns(att)["pattern_per_head"]
    assert first == analyze_attention_patterns(att.copy())["pattern_per_head"]
    assert set(first) <= {"local", "global", "prefix_suffix", "sparse", "mixed"}
    assert len(first) == 6


def test_entropy_of_a_hand_computed_two_by_two() -> None:
    att = np.array([[0.5, 0.5], [0.9, 0.1]])
    row0 = math.log(2)
    row1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    result = analyze_attention_patterns(att)
    assert result["attention_entropy"] == pytest.approx([(row0 + row1) / 2])
    assert result["normalized_entropy"] == pytest.approx([(row0 + row1) / 2 / math.log(2)])
    assert result["max_attention_per_head"] == pytest.approx([(0.5 + 0.9) / 2])
    # Diagonal mean (0.5 + 0.1) / 2 over matrix mean 2 / 4.
    assert result["diagonal_attention_strength"] == pytest.approx([0.3 / 0.5])
    assert result["mean_attention_distance"] == pytest.approx([(0.5 + 0.9) / 2])


def test_zero_probabilities_add_no_entropy() -> None:
    att = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    result = analyze_attention_patterns(att)
    assert result["attention_entropy"] == pytest.approx([math.log(2) / 3])


def test_non_square_uses_the_leading_diagonal() -> None:
    att = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],
            [0.2, 0.4, 0.2, 0.2],
        ]
    )
    result = analyze_attention_patterns(att)
    # Leading diagonal (0,0), (1,1): mean 0.55; matrix mean 2 / 8 = 0.25.
    assert result["diagonal_attention_strength"] == pytest.approx([0.55 / 0.25])
    expected_distance = (0.1 * 1 + 0.1 * 2 + 0.1 * 3 + (0.2 * 1 + 0.2 * 1 + 0.2 * 2)) / 2
    assert result["mean_attention_distance"] == pytest.approx([expected_distance])
    assert result["normalized_entropy"][0] == pytest.approx(
        result["attention_entropy"][0] / math.log(4)
    )


def test_batch_items_are_averaged_per_head() -> None:
    k = 4
    uniform = np.full((k, k), 1.0 / k)
    identity = np.eye(k)
    batch = np.stack([np.stack([uniform, identity]), np.stack([identity, identity])])
    result = analyze_attention_patterns(batch)
    assert result["num_heads"] == 2
    assert result["attention_entropy"] == pytest.approx([math.log(k) / 2, 0.0])
    assert result["max_attention_per_head"] == pytest.approx([(1 / k + 1) / 2, 1.0])
    assert result["diagonal_attention_strength"] == pytest.approx([(1 + k) / 2, k])
    assert result["avg_entropy"] == pytest.approx(math.log(k) / 4)
    # Each item separately, then averaged, gives the same numbers.
    one = analyze_attention_patterns(batch[0])
    two = analyze_attention_patterns(batch[1])
    for key in ("attention_entropy", "max_attention_per_head", "diagonal_attention_strength"):
        pairs = zip(one[key], two[key], strict=True)
        assert result[key] == pytest.approx([(a + b) / 2 for a, b in pairs])


def test_one_head_two_dimensional_input() -> None:
    att = _softmax(np.random.default_rng(0).normal(size=(5, 5)))
    flat = analyze_attention_patterns(att)
    nested = analyze_attention_patterns(att[None, None])
    assert flat == nested
    assert flat["num_heads"] == 1


def test_results_are_plain_json() -> None:
    att = _softmax(np.random.default_rng(1).normal(size=(2, 3, 6, 6))).astype(np.float32)
    result = analyze_attention_patterns(att)
    assert json.loads(json.dumps(result)) == result
    assert isinstance(result["num_heads"], int)
    assert all(type(v) is float for v in result["attention_entropy"])


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (np.full((1, 1, 2, 2), np.nan), "NaN"),
        (np.array([[0.5, np.inf], [0.5, 0.5]]), "infinite"),
        (np.array([[1.5, -0.5], [0.5, 0.5]]), "negative"),
        (np.ones(4) / 4, "(batch, heads, query_len, key_len)"),
        (np.ones((1, 1, 1, 2, 2)) / 2, "rank 5"),
        (np.zeros((1, 2, 0, 3)), "empty"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_invalid_input_raises_invalid_input_error(bad: object, needle: str) -> None:
    with pytest.raises(InvalidInputError, match="shape|numeric") as info:
        analyze_attention_patterns(bad)
    assert needle in str(info.value)
    assert info.value.status_name == "INVALID_ARGUMENT"


def test_rollout_of_identity_layers_is_identity() -> None:
    n = 5
    layers = [np.stack([np.eye(n)] * 3) for _ in range(4)]
    assert np.allclose(attention_rollout(layers), np.eye(n))
    assert np.allclose(attention_rollout(layers, add_residual=False), np.eye(n))


def test_rollout_matches_a_hand_written_product() -> None:
    rng = np.random.default_rng(3)
    n = 6
    layers = [_softmax(rng.normal(size=(4, n, n))) for _ in range(3)]
    expected = np.eye(n)
    for layer in layers:  # first layer first: R = A3 @ A2 @ A1
        mixed = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(n)
        expected = mixed @ expected
    result = attention_rollout(layers)
    assert result.shape == (n, n)
    assert np.allclose(result, expected)
    assert np.allclose(result.sum(axis=-1), 1.0)
    plain = attention_rollout(layers, add_residual=False)
    means = [layer.mean(axis=0) for layer in layers]
    assert np.allclose(plain, means[2] @ means[1] @ means[0])
    assert not np.allclose(plain, means[0] @ means[1] @ means[2])


def test_rollout_accepts_single_head_matrices() -> None:
    att = _softmax(np.random.default_rng(4).normal(size=(4, 4)))
    assert np.allclose(attention_rollout([att], add_residual=False), att)


@pytest.mark.parametrize(
    "layers",
    [
        [],
        [np.full((2, 3, 4), 0.25)],
        [np.full((2, 3, 3), 1 / 3), np.full((2, 4, 4), 0.25)],
        [np.full((1, 2, 3, 3), 1 / 3)],
    ],
)
def test_rollout_rejects_unusable_layers(layers: list[np.ndarray]) -> None:
    with pytest.raises(InvalidInputError):
        attention_rollout(layers)


def test_summarize_layers_is_analysis_json() -> None:
    rng = np.random.default_rng(5)
    attention = {
        "transformer_encoder_0": _softmax(rng.normal(size=(2, 4, 7, 7))),
        "transformer_encoder_1": _softmax(rng.normal(size=(2, 4, 7, 7))),
    }
    summary = summarize_layers(attention)
    assert json.loads(json.dumps(summary)) == summary
    assert list(summary["layers"]) == list(attention)
    layer0 = summary["layers"]["transformer_encoder_0"]
    assert layer0["shape"] == [2, 4, 7, 7]
    assert (
        layer0["attention_entropy"]
        == analyze_attention_patterns(attention["transformer_encoder_0"])["attention_entropy"]
    )
    expected = attention_rollout([a[0] for a in attention.values()])
    assert np.allclose(np.array(summary["rollout"]), expected)


def test_summarize_layers_skips_rollout_for_non_square_or_mixed_sizes() -> None:
    cross = {"multi_head_attention_0": np.full((1, 2, 3, 5), 0.2)}
    assert "rollout" not in summarize_layers(cross)
    mixed = {"a": _uniform(4), "b": _uniform(6)}
    summary = summarize_layers(mixed)
    assert "rollout" not in summary
    assert summary["layers"]["b"]["shape"] == [1, 2, 6, 6]


# --- the same numbers as the whole-layer float64 implementation, in bounded memory ---------


def _reference_item(item: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of one batch item as the first implementation computed them (a copy)."""
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


def _reference_metrics(attention: np.ndarray) -> dict[str, Any]:
    arr = np.asarray(attention)
    while arr.ndim < 4:
        arr = arr[np.newaxis]
    _, heads, _, k = arr.shape
    per_item = [_reference_item(item) for item in arr]
    m = {name: np.mean([item[name] for item in per_item], axis=0) for name in per_item[0]}
    norm_entropy = m["entropy"] / math.log(k) if k > 1 else np.zeros(heads)
    edge = max(1, k // 20)
    labels = [
        analysis._pattern_label(
            k=k,
            normalized_entropy=float(norm_entropy[h]),
            diagonal_strength=float(m["diagonal"][h]),
            window_mass=float(m["window_mass"][h]),
            edge_mass=float(m["edge_mass"][h]),
            edges_small=k >= 4 * edge,
        )
        for h in range(heads)
    ]
    return {
        "num_heads": int(heads),
        "attention_entropy": list(m["entropy"]),
        "max_attention_per_head": list(m["row_max"]),
        "attention_distribution": [
            {stat: float(m[stat][h]) for stat in ("mean", "std", "min", "max")}
            for h in range(heads)
        ],
        "diagonal_attention_strength": list(m["diagonal"]),
        "avg_entropy": float(m["entropy"].mean()),
        "avg_max_attention": float(m["row_max"].mean()),
        "avg_diagonal_strength": float(m["diagonal"].mean()),
        "pattern_per_head": labels,
        "mean_attention_distance": list(m["distance"]),
        "normalized_entropy": list(norm_entropy),
    }


def _reference_rollout(items: list[np.ndarray]) -> np.ndarray:
    result = None
    for layer in items:
        arr = np.clip(np.asarray(layer).astype(np.float64), 0.0, None)
        mixed = arr if arr.ndim == 2 else arr.mean(axis=0)
        mixed = mixed + np.eye(arr.shape[-1])
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        result = mixed if result is None else mixed @ result
    assert result is not None
    return result


def _assert_same_numbers(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            _assert_same_numbers(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same_numbers(a, b, f"{path}[{i}]")
    elif isinstance(want, str | int) and not isinstance(want, float):
        assert got == want, path
    else:
        assert got == pytest.approx(float(want), rel=1e-6, abs=1e-6), path


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)
    sharp = _softmax(rng.normal(size=(2, 3, 9, 9)) * 6)
    masked_rows = _softmax(rng.normal(size=(1, 2, 8, 8)))
    masked_rows[:, :, 5:] = 0.0  # padding queries attend nowhere
    masked_keys = _softmax(rng.normal(size=(2, 2, 7, 10)))
    masked_keys[..., 7:] = 0.0  # padding keys get 0
    masked_keys /= masked_keys.sum(axis=-1, keepdims=True)
    slightly_negative = _softmax(rng.normal(size=(1, 2, 6, 6)))
    slightly_negative[0, 0, 1, 2] = -5e-7  # float16 or float32 rounding below 0
    return {
        "random": _softmax(rng.normal(size=(2, 3, 7, 7))),
        "sharp": sharp,
        "non_square_wide": _softmax(rng.normal(size=(1, 4, 5, 23))),
        "non_square_tall": _softmax(rng.normal(size=(3, 2, 30, 4))),
        "masked_rows": masked_rows,
        "masked_keys": masked_keys,
        "float16": _softmax(rng.normal(size=(2, 2, 40, 40)) * 3).astype(np.float16),
        "float32": _softmax(rng.normal(size=(1, 3, 64, 64)) * 2).astype(np.float32),
        "one_key": np.ones((1, 2, 5, 1)),
        "identity": np.eye(12)[None, None],
        "uniform": _uniform(9, heads=2),
        "slightly_negative": slightly_negative,
    }


@pytest.mark.parametrize("block_rows", [None, 1, 3])
@pytest.mark.parametrize("case", list(_cases()))
def test_metrics_equal_the_whole_layer_implementation(
    case: str, block_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    attention = _cases()[case]
    if block_rows is not None:  # force several blocks of query rows per head
        size = int(np.prod(np.shape(attention)[:-2])) * attention.shape[-1] * block_rows
        monkeypatch.setattr(analysis, "_METRIC_BLOCK_ELEMENTS", size)
    _assert_same_numbers(analyze_attention_patterns(attention), _reference_metrics(attention))


def test_layer_metrics_is_the_summary_entry_with_its_shape() -> None:
    cases = _cases()
    layers = {name: cases[name] for name in ("random", "sharp", "float16")}
    summary = summarize_layers(layers)
    for name, attention in layers.items():
        metrics = layer_metrics(attention)
        assert metrics == summary["layers"][name]
        assert metrics["shape"] == list(attention.shape)
        assert json.loads(json.dumps(metrics)) == metrics


def test_layer_metrics_reads_a_read_only_memmap(tmp_path: Path) -> None:
    attention = _cases()["float16"]
    np.save(tmp_path / "layer.npy", attention)
    mapped = np.load(tmp_path / "layer.npy", mmap_mode="r")
    assert not mapped.flags.writeable
    assert layer_metrics(mapped) == layer_metrics(attention.copy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_rollout_equals_the_whole_layer_implementation(
    dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(13)
    layers = [_softmax(rng.normal(size=(2, 3, 11, 11)) * 2).astype(dtype) for _ in range(3)]
    expected = _reference_rollout([layer[0] for layer in layers])
    monkeypatch.setattr(analysis, "_BLOCK_BYTES", 8 * 11 * 4)  # blocks of 4 rows
    rollout = Rollout()
    for layer in layers:
        rollout.add(layer)
    result = rollout.result()
    assert result is not None and result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(attention_rollout([a[0] for a in layers]), expected, rtol=1e-6)
    summary = summarize_layers({str(i): a for i, a in enumerate(layers)}, rollout_as_list=False)
    assert isinstance(summary["rollout"], np.ndarray)
    np.testing.assert_allclose(summary["rollout"], expected, rtol=1e-6)


def test_rollout_results_stay_valid_as_layers_are_added() -> None:
    rng = np.random.default_rng(14)
    first, second = (_softmax(rng.normal(size=(1, 2, 6, 6))) for _ in range(2))
    rollout = Rollout()
    rollout.add(first)
    after_one = rollout.result()
    assert after_one is not None
    kept = after_one.copy()
    rollout.add(second)
    np.testing.assert_array_equal(after_one, kept)
    np.testing.assert_allclose(rollout.result(), _reference_rollout([first[0], second[0]]))


def test_rollout_is_none_when_layers_do_not_fit() -> None:
    assert Rollout().result() is None
    cross = Rollout()
    cross.add(np.full((1, 2, 3, 5), 0.2))
    assert cross.result() is None and "square" in (cross.problem or "")
    mixed = Rollout()
    mixed.add(_uniform(4))
    mixed.add(_uniform(6))
    mixed.add(_uniform(4))  # a later fitting layer does not bring it back
    assert mixed.result() is None and "layer 0 has 4" in (mixed.problem or "")


def _peak_traced_bytes(work: Any) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_layer_metrics_memory_stays_far_below_a_float64_copy_of_the_layer() -> None:
    rng = np.random.default_rng(15)
    k = 2048
    layer = rng.random((1, 4, k, k), dtype=np.float32)
    layer /= layer.sum(axis=-1, keepdims=True)
    float64_bytes = layer.size * 8  # 128 MiB
    peak = _peak_traced_bytes(lambda: layer_metrics(layer))
    # Two float64 blocks and a boolean one (about 34 MiB here), whatever the heads or length.
    assert peak < float64_bytes / 2, f"peak {peak / 2**20:.0f} MiB"


def test_rollout_memory_is_the_running_product_and_one_head_mean() -> None:
    n = 1024
    layer = np.full((1, 8, n, n), 1.0 / n, dtype=np.float32)
    matrix_bytes = n * n * 8  # 8 MiB; the layer in float64 is 64 MiB

    def two_layers() -> None:
        rollout = Rollout()
        rollout.add(layer)
        rollout.add(layer)

    peak = _peak_traced_bytes(two_layers)
    assert peak < 4 * matrix_bytes, f"peak {peak / 2**20:.0f} MiB"


def test_a_long_exact_rollout_takes_float32_products_equal_to_float64() -> None:
    # Past 1,024 positions the products are float32 (the rollout is sent as float32 anyway);
    # the numbers stay those of the float64 reference to 1e-6.
    rng = np.random.default_rng(21)
    layers = [_softmax(rng.normal(size=(1, 2, 1100, 1100)) * 3).astype(np.float32) for _ in "ab"]
    result = attention_rollout([a[0] for a in layers])
    assert result.dtype == np.float32 and result.shape == (1100, 1100)
    np.testing.assert_allclose(result, _reference_rollout([a[0] for a in layers]), atol=1e-6)
    np.testing.assert_allclose(result.sum(axis=-1), 1.0, atol=1e-5)
