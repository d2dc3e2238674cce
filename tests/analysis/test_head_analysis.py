"""neural_attn.head_analysis on planted matrices with known answers."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from neural_attn.analysis import analyze_attention_patterns, layer_metrics
from neural_attn.errors import CancelledError, InvalidInputError
from neural_attn.head_analysis import (
    METRICS,
    QUANTILES,
    Mask,
    Profile,
    Sanity,
    compare_layer,
    flat_metrics,
    head_distance,
    js_divergence,
    mask_heads,
    masked_layer_metrics,
    per_item_metrics,
    similarity,
    similarity_cost,
)


def one_hot(n: int, targets: list[int]) -> np.ndarray:
    m = np.zeros((n, n))
    m[np.arange(n), targets] = 1.0
    return m


def test_js_of_a_head_with_itself_is_0_and_of_disjoint_one_hot_heads_is_1():
    n = 6
    prev = one_hot(n, [max(i - 1, 0) for i in range(n)])
    rev = one_hot(n, [n - 1 - i for i in range(n)])
    shifted = one_hot(n, [(i + 1) % n for i in range(n)])  # disjoint from `prev` on every row
    assert head_distance(prev, prev) == 0.0
    assert head_distance(shifted, one_hot(n, [(i + 3) % n for i in range(n)])) == pytest.approx(1)
    # rows agree on 0 (row 0 both at key 0) ... known value: 1 - 1/n of rows disjoint.
    both = one_hot(n, [0] * n)
    assert head_distance(prev, both) == pytest.approx((n - 2) / n)
    assert 0 < head_distance(prev, rev) <= 1


def test_js_divergence_known_value_and_base_2():
    # p = (1, 0), q = (0.5, 0.5): m = (0.75, 0.25)
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2))
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(expected)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_similarity_across_layers_and_redundant_groups():
    n = 8
    prev = one_hot(n, [max(i - 1, 0) for i in range(n)])
    first = one_hot(n, [0] * n)
    near_prev = 0.9 * prev + 0.1 / n  # 90% on the same key: distance ~0.2 < 0.3
    layers = {
        "l0": np.stack([prev, first])[None],  # (1, 2, n, n)
        "l1": np.stack([near_prev, np.full((n, n), 1 / n)])[None],
    }
    result = similarity(layers)
    assert [h["layer"] for h in result["heads"]] == ["l0", "l0", "l1", "l1"]
    d = np.array(result["distance"])
    assert np.allclose(np.diag(d), 0) and np.allclose(d, d.T)
    assert d[0, 2] < 0.3 < d[0, 1]
    assert result["groups"] == [[0, 2]]
    assert result["pairs"][0]["a"] == 0 and result["pairs"][0]["b"] == 2
    assert not result["pairs"][0]["same_layer"]
    assert similarity(layers, threshold=0.0)["groups"] == []
    with pytest.raises(InvalidInputError):
        similarity(layers, threshold=2)


def test_similarity_marks_heads_of_different_shapes_incomparable():
    result = similarity({"a": np.full((1, 1, 4, 4), 0.25), "b": np.full((1, 1, 2, 2), 0.5)})
    assert result["distance"][0][1] == -1 and result["pairs"] == []


def test_mask_removes_positions_and_renormalizes():
    # A head that puts 60% on a CLS at key 0 and 40% on the previous token.
    n = 6
    head = 0.6 * one_hot(n, [0] * n) + 0.4 * one_hot(n, [max(i - 1, 0) for i in range(n)])
    attention = head[None, None]
    keep = Mask(positions=(0,)).keep(1, n, None)
    masked = masked_layer_metrics(attention, keep)
    # Without the CLS, rows 2.. put all their mass on the previous token; row 1 had only the CLS
    # and is dropped: 4 rows, each one-hot.
    assert masked["max_attention_per_head"] == [pytest.approx(1.0)]
    assert masked["attention_entropy"] == [pytest.approx(0.0)]
    assert masked["pattern_per_head"] == ["local"]
    assert masked["shape"] == [1, 1, n, n]
    plain = masked_layer_metrics(attention)
    assert plain == layer_metrics(attention)


def test_padding_mask_needs_token_ids_and_masks_per_item():
    ids = np.array([[5, 6, 7, 0], [5, 6, 0, 0]])
    keep = Mask(padding_id=0).keep(2, 4, ids)
    assert keep.tolist() == [[True, True, True, False], [True, True, False, False]]
    with pytest.raises(InvalidInputError, match="token ids"):
        Mask(padding_id=0).keep(2, 4, None)
    with pytest.raises(InvalidInputError, match="outside"):
        Mask(positions=(9,)).keep(2, 4, None)
    uniform = np.full((2, 1, 4, 4), 0.25)
    m = masked_layer_metrics(uniform, keep)
    # item 0: 3 keys uniform (entropy log 3); item 1: 2 keys (log 2); averaged.
    assert m["attention_entropy"][0] == pytest.approx((math.log(3) + math.log(2)) / 2)
    assert m["items_analyzed"] == 2


def test_fully_masked_non_square_and_length_1_give_numbers_never_nan():
    everything = Mask(positions=(0, 1)).keep(1, 2, None)
    m = masked_layer_metrics(np.full((1, 2, 2, 2), 0.5), everything)
    assert m["attention_entropy"] == [0.0, 0.0] and m["items_analyzed"] == 0
    causal_pad = np.array([[[[0.0, 0.0], [0.0, 1.0]]]])  # row 0 fully masked
    for metrics in (
        masked_layer_metrics(causal_pad),
        masked_layer_metrics(causal_pad, np.ones((1, 2), bool)),
    ):
        assert all(np.isfinite(v) for name in METRICS for v in [flat_metrics(metrics, 0)[name]])
    non_square = np.full((1, 2, 3, 5), 0.2)
    one = np.ones((1, 1, 1, 1))
    for arr in (non_square, one):
        m = masked_layer_metrics(arr, np.ones((1, arr.shape[-1]), bool))
        assert all(np.isfinite(flat_metrics(m, 0)[name]) for name in METRICS)
    assert similarity({"x": one})["groups"] == []
    assert head_distance(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0


def test_sanity_reports_rows_dtype_and_fully_masked_rows():
    s = Sanity()
    s.add(np.array([[[[0.0, 0.0], [0.3, 0.7]]]], dtype=np.float32))
    r = s.result()
    assert r["rows_sum_to_one"] and r["fully_masked_rows"] == 1 and r["rows"] == 2
    assert r["dtype"] == "float32" and r["finite"]
    bad = Sanity()
    bad.add(np.array([[0.5, 0.4], [np.nan, 1.0]]))
    r = bad.result()
    assert not r["finite"] and not r["rows_sum_to_one"]
    assert r["max_row_error"] == pytest.approx(0.1)


def test_profile_of_a_batch_equals_per_sample_results_aggregated():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 2, 5, 5)) * 3
    attention = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    whole = Profile()
    whole.add("l", attention)
    in_batches = Profile()
    for start in range(0, 7, 3):
        in_batches.add("l", attention[start : start + 3])
    per_sample = [analyze_attention_patterns(attention[b]) for b in range(7)]
    for profile in (whole, in_batches):
        result = profile.result()
        assert result["exact_quantiles"]
        for entry in result["layers"]["l"]:
            h = entry["head"]
            assert entry["samples"] == 7
            for name in METRICS:
                values = np.array([flat_metrics(m, h)[name] for m in per_sample])
                stat = entry["metrics"][name]
                assert stat["mean"] == pytest.approx(values.mean())
                assert stat["std"] == pytest.approx(values.std(), abs=1e-12)
                for q in QUANTILES:
                    assert stat["quantiles"][str(q)] == pytest.approx(np.quantile(values, q))
            labels = [m["pattern_per_head"][h] for m in per_sample]
            assert entry["labels"] == {k: labels.count(k) / 7 for k in entry["labels"]}
            assert sum(entry["labels"].values()) == pytest.approx(1.0)
    assert list(per_item_metrics(attention[:1]))[0] == per_sample[0]


def test_compare_with_itself_is_zero_and_planted_change_is_ranked():
    n = 6
    prev = one_hot(n, [max(i - 1, 0) for i in range(n)])
    uniform = np.full((n, n), 1 / n)
    a = np.stack([prev, uniform])[None]
    rows = compare_layer("l", a, a)
    assert all(r["js_distance"] == 0 and all(v == 0 for v in r["delta"].values()) for r in rows)
    b = np.stack([uniform, uniform])[None]
    rows = compare_layer("l", a, b)
    assert rows[0]["js_distance"] > 0.5 and rows[1]["js_distance"] == 0
    assert rows[0]["delta"]["attention_entropy"] == pytest.approx(math.log(n))
    assert (rows[0]["label_a"], rows[0]["label_b"]) == ("local", "global")
    with pytest.raises(InvalidInputError):
        compare_layer("l", a, a[:, :1])


# -- bounded and cancellable (issue 17) ---------------------------------------------------------
class _StopAfter:
    """A should_stop that says yes from its `n`-th question on, counting the questions."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked >= self.n


def test_similarity_of_2000_heads_stops_when_asked_within_a_few_pairs():
    stop = _StopAfter(5)
    started = time.monotonic()
    with pytest.raises(CancelledError, match="analysis stopped"):
        similarity({"l": np.ones((1, 2000, 1, 1))}, should_stop=stop)
    assert stop.asked == 5 and time.monotonic() - started < 1  # 1,999,000 pairs: 78 s


def test_one_long_head_is_stopped_between_blocks_of_rows():
    n = 4096  # blocks of 512 rows (the metrics) or 256 (JS, sanity, masks): many per head
    head = np.full((1, 1, n, n), 1.0 / n, dtype=np.float32)
    for run in (
        lambda stop: layer_metrics(head, should_stop=stop),
        lambda stop: head_distance(head[0], head[0], should_stop=stop),
        lambda stop: Sanity().add(head, should_stop=stop),
        lambda stop: mask_heads(head, np.ones((1, n), bool), should_stop=stop),
        lambda stop: Profile().add("l", head, should_stop=stop),
    ):
        stop = _StopAfter(2)
        with pytest.raises(CancelledError):
            run(stop)
        assert stop.asked == 2


def test_similarity_cost_counts_comparable_pairs_and_their_values_from_shapes():
    # 3 heads of (1, 4, 4) and 2 of (2, 4, 4): 3 + 1 pairs; 3 x 16 + 1 x 32 values.
    assert similarity_cost([(1, 3, 4, 4), (2, 2, 4, 4)]) == (4, 80)
    assert similarity_cost([(1, 2000, 1, 1)]) == (1_999_000, 1_999_000)
    assert similarity_cost([]) == (0, 0)


def test_mask_positions_resolve_against_the_length_collapsed_and_sorted():
    mask = Mask(positions=(5, 0, -1, 0, -6))
    assert mask.resolved([6]).positions == (0, 5)
    assert mask.resolved([6]).describe() == ["positions 0, 5"]
    # Several lengths: negative positions stay what they count back from, after the others.
    assert mask.resolved([6, 8]).positions == (0, 5, -6, -1)
    with pytest.raises(InvalidInputError, match=r"masked position 5 \(and 1 more\) is outside"):
        Mask(positions=(5, 7, 0)).resolved([5])
    assert Mask().resolved([3]) == Mask()


def test_a_profile_with_every_sample_masked_away_has_every_head_at_zero():
    attention = np.full((2, 3, 4, 4), 0.25)
    profile = Profile()
    profile.add("l", attention, Mask(positions=(0, 1, 2, 3)).keep(2, 4, None))
    rows = profile.result()["layers"]["l"]
    assert [r["head"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["samples"] == 0 and set(row["labels"].values()) == {0.0}
        assert all(stat["mean"] == stat["std"] == 0.0 for stat in row["metrics"].values())
