"""Head analyses through the real gRPC server on loopback, on the trained toy models, in both
backends: labels of learned heads, ablation, similarity, profiles, comparison, masks, provenance,
and the CLI subcommands."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from neural_attn.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "examples" / "attention_examples" / "trained"
sys.path.insert(0, str(ROOT / "examples" / "attention_examples"))
from train_toy import target_pattern  # noqa: E402

BACKENDS = ("tensorflow", "pytorch")
LAYER = "multi_head_attention_0"
# The label each task's heads must get, and why (analysis.analyze_attention_patterns' rule).
EXPECTED = {
    "previous_token": "local",  # the mass sits at |i - j| = 1, inside the local window
    "first_token": "prefix_suffix",  # every row on key 0: a vertical band on the first key
    "reverse": "sparse",  # focused (low entropy) off the diagonal and the edges
}


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(7).integers(1, 16, size=(8, 12))


def _trained(client, task: str, backend: str, *, weights: bool = True):
    return client.compile_file(
        TRAINED / f"{task}.neural",
        backend=backend,
        weights=TRAINED / f"{task}.npz" if weights else None,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_trained_heads_get_the_label_of_their_task(client, backend, task, tokens):
    model = _trained(client, task, backend)
    attention = dict(client.extract_attention(model, tokens))[LAYER]
    result = client.analyze_heads(model=model, data=tokens)
    metrics = result["layers"][LAYER]
    # The figures that decide it: the mass each head puts where the task needs it, and the
    # numbers the label rule reads.
    mass = (attention * target_pattern(task)).sum(-1).mean(axis=(0, 2))
    assert (mass > 0.9).all(), mass
    assert metrics["pattern_per_head"] == [EXPECTED[task]] * 2, metrics
    assert max(metrics["normalized_entropy"]) < 0.15
    p = result["provenance"]
    assert p["source"] == "model" and p["backend"] == backend and p["weights_sha256"]
    assert p["rows_sum_to_one"] and p["finite"] and p["dtype"] == "float32"
    assert p["attention_path"] == model.attention_path and p["items"] == 8


@pytest.fixture(scope="module")
def ablations(server_target, tokens):
    from neural_attn.client import AttentionClient

    with AttentionClient(server_target, timeout=120) as c:
        results = {}
        for backend in BACKENDS:
            updates: list[dict] = []
            model = _trained(c, "previous_and_first", backend)
            results[backend] = (
                c.ablate_heads(model, tokens, heads_per_pass=1, progress=updates.append),
                updates,
            )
        return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_ablation_ranks_the_task_head_first(ablations, backend):
    result, updates = ablations[backend]
    assert result["ranked_by"] == "kl" and result["softmax_output"]
    first, second = result["heads"]
    # Head 1 learned the previous token (most of the output), head 0 the first token (1 bit).
    assert (first["head"], first["pattern"], first["rank"]) == (1, "local", 1)
    assert (second["head"], second["pattern"]) == (0, "prefix_suffix")
    assert first["kl"] > 1.2 * second["kl"] > 0.5
    assert [u["done"] for u in updates] == [0, 1, 2] and updates[-1]["total"] == 2
    assert result["provenance"]["rows_sum_to_one"]


def test_ablation_agrees_between_backends(ablations):
    tf, torch = (ablations[b][0]["heads"] for b in BACKENDS)
    assert [(h["layer"], h["head"]) for h in tf] == [(h["layer"], h["head"]) for h in torch]
    for a, b in zip(tf, torch, strict=True):
        for key in ("kl", "l2", "relative_l2"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_head_with_a_zero_output_projection_changes_nothing(client, backend, tokens):
    with np.load(TRAINED / "previous_and_first.npz") as npz:
        weights = dict(npz)
    weights[f"{LAYER}/output_kernel"][0] = 0.0
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    source = (TRAINED / "previous_and_first.neural").read_text()
    model = client.compile(source, backend=backend, weights=buffer.getvalue())
    result = client.ablate_heads(model, tokens)  # both heads in one batched pass
    impact = {h["head"]: h for h in result["heads"]}
    assert impact[0]["l2"] < 1e-6 and impact[0]["kl"] < 1e-6
    assert impact[1]["kl"] > 0.5 and impact[1]["rank"] == 1


def test_ablation_refuses_unknown_heads(client, tokens):
    model = _trained(client, "reverse", "pytorch")
    with pytest.raises(InvalidInputError, match="head 5"):
        client.ablate_heads(model, tokens, heads=[(LAYER, 5)])
    with pytest.raises(InvalidInputError, match="no attention layer"):
        client.ablate_heads(model, tokens, heads=[("dense_0", 0)])


def test_similarity_finds_redundant_heads_of_one_task_and_distinct_heads_of_two(client, tokens):
    same = client.head_similarity(model=_trained(client, "previous_token", "pytorch"), data=tokens)
    assert same["groups"] == [[{"layer": LAYER, "head": 0}, {"layer": LAYER, "head": 1}]]
    assert same["distance"][0, 1] < same["threshold"] == 0.3
    split = client.head_similarity(
        model=_trained(client, "previous_and_first", "tensorflow"), data=tokens
    )
    assert split["groups"] == [] and split["distance"][0, 1] > 0.6
    assert np.allclose(np.diag(split["distance"]), 0)


def test_similarity_of_sent_attention_self_zero_disjoint_one(client):
    n = 6
    shift1 = np.eye(n)[np.roll(np.arange(n), 1)]
    shift3 = np.eye(n)[np.roll(np.arange(n), 3)]
    attention = {"a": np.stack([shift1, shift1])[None], "b": shift3[None, None]}
    result = client.head_similarity(attention)
    assert result["distance"][0, 1] == pytest.approx(0.0)
    assert result["distance"][0, 2] == pytest.approx(1.0)
    assert result["provenance"]["source"] == "sent"
    assert result["groups"] == [[{"layer": "a", "head": 0}, {"layer": "a", "head": 1}]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_profile_over_a_batch_equals_per_sample_results_aggregated(client, backend, tokens):
    model = _trained(client, "previous_and_first", backend)
    updates: list[dict] = []
    profile = client.profile_heads(
        model, [tokens[:5], tokens[5:]], batch_size=2, total_items=8, progress=updates.append
    )
    assert [u["done"] for u in updates] == [2, 4, 5, 7, 8]
    assert profile["samples"] == 8 and profile["exact_quantiles"]
    per_sample = [
        client.analyze(model=model, data=tokens[i : i + 1])["layers"][LAYER] for i in range(8)
    ]
    # The same numbers up to float32 rounding (a pass over 2 items vs 1 in TensorFlow).
    for head in profile["layers"][LAYER]:
        h = head["head"]
        entropy = np.array([m["attention_entropy"][h] for m in per_sample])
        stat = head["metrics"]["attention_entropy"]
        assert stat["mean"] == pytest.approx(entropy.mean(), abs=1e-6)
        assert stat["std"] == pytest.approx(entropy.std(), abs=1e-6)
        assert stat["quantiles"]["0.5"] == pytest.approx(np.median(entropy), abs=1e-6)
        labels = [m["pattern_per_head"][h] for m in per_sample]
        assert head["labels"] == {k: labels.count(k) / 8 for k in head["labels"]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_compare_a_checkpoint_with_itself_and_with_random_init(client, backend, tokens):
    trained = _trained(client, "reverse", backend)
    same = client.compare_checkpoints(trained, trained, tokens)
    assert all(h["js_distance"] == 0 for h in same["heads"])
    assert all(m["delta"] == 0 for h in same["heads"] for m in h["metrics"].values())
    random = client.compare_checkpoints(
        trained, _trained(client, "reverse", backend, weights=False), tokens
    )
    assert [h["rank"] for h in random["heads"]] == [1, 2]
    assert all(h["js_distance"] > 0.6 for h in random["heads"])
    assert {h["pattern_a"] for h in random["heads"]} == {"sparse"}
    assert random["provenance_b"]["weights_sha256"] == ""
    assert random["heads"][0]["metrics"]["attention_entropy"]["delta"] > 1.0


def test_masks_on_the_wire_exclude_positions_and_padding(client):
    n = 6
    cls_then_prev = 0.6 * np.eye(n)[[0] * n] + 0.4 * np.eye(n)[[max(i - 1, 0) for i in range(n)]]
    attention = {"l": cls_then_prev[None, None]}
    plain = client.analyze_heads(attention)
    masked = client.analyze_heads(attention, exclude_positions=[0])
    assert plain["layers"]["l"]["max_attention_per_head"][0] == pytest.approx(
        (2 + 0.6 * (n - 2)) / n
    )
    assert masked["layers"]["l"]["max_attention_per_head"][0] == pytest.approx(1.0)
    assert masked["provenance"]["masked"] == ["positions 0"]
    prev = np.eye(n)[[max(i - 1, 0) for i in range(n)]]
    two = {"l": np.stack([cls_then_prev, prev])[None]}
    assert client.head_similarity(two)["distance"][0, 1] > 0.3
    assert client.head_similarity(two, exclude_positions=[0])["distance"][0, 1] == 0.0
    padded = {"l": np.full((1, 1, 4, 4), 0.25)}
    result = client.analyze_heads(padded, mask_padding=True, token_ids=np.array([[3, 4, 0, 0]]))
    assert result["layers"]["l"]["attention_entropy"][0] == pytest.approx(np.log(2))
    with pytest.raises(InvalidInputError, match="token ids"):
        client.analyze_heads(padded, mask_padding=True)
    everything = client.analyze_heads(padded, exclude_positions=[0, 1, 2, 3])
    assert everything["layers"]["l"]["attention_entropy"] == [0.0]


def test_provenance_counts_fully_masked_rows_and_defined_numbers(client):
    causal_pad = np.array([[[[0.0, 0.0], [0.0, 1.0]]]], dtype=np.float32)  # row 0 all masked
    result = client.analyze_heads({"l": causal_pad})
    assert result["provenance"]["fully_masked_rows"] == 1
    assert result["provenance"]["rows_sum_to_one"]
    length_one = client.analyze_heads({"l": np.ones((1, 2, 1, 1))})
    assert length_one["layers"]["l"]["normalized_entropy"] == [0.0, 0.0]
    non_square = client.head_similarity({"l": np.full((1, 2, 3, 5), 0.2)})
    assert non_square["distance"][0, 1] == 0.0


def _cli_json(capsys, *args: str) -> dict:
    from neural_attn.client.cli import main

    assert main(list(args)) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one document


def test_cli_subcommands_write_one_json_document(server_target, capsys, tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(3).integers(1, 16, size=(4, 12)))
    model = str(TRAINED / "previous_and_first.neural")
    weights = str(TRAINED / "previous_and_first.npz")
    common = ["--server", server_target, "--weights", weights, "--data", str(data), "--quiet"]
    common += ["--format", "json"]
    analyzed = _cli_json(capsys, "analyze", model, *common, "--backend", "pytorch")
    assert analyzed["layers"][LAYER]["pattern_per_head"] == ["prefix_suffix", "local"]
    assert analyzed["provenance"]["backend"] == "pytorch"
    similar = _cli_json(capsys, "similarity", model, *common)
    assert len(similar["distance"]) == 2
    ablated = _cli_json(capsys, "ablate", model, *common, "--head", f"{LAYER}:1")
    assert [h["head"] for h in ablated["heads"]] == [1]
    profiled = _cli_json(capsys, "profile", model, *common, "--data", str(data))
    assert profiled["samples"] == 8
    compared = _cli_json(capsys, "compare", model, *common, "--weights-b", weights)
    assert all(h["js_distance"] == 0 for h in compared["heads"])
    other = _cli_json(
        capsys, "compare", model, *common, "--model-b", str(TRAINED / "reverse.neural")
    )
    assert other["unmatched_layers"] == [] and len(other["heads"]) == 2


def test_cli_csv_and_table(server_target, capsys):
    from neural_attn.client.cli import main

    model = str(TRAINED / "previous_token.neural")
    args = ["--server", server_target, "--weights", str(TRAINED / "previous_token.npz")]
    assert main(["similarity", model, *args, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "head_a,head_b,js_distance,same_layer,redundant"
    assert lines[1].endswith(",True,True")
    assert main(["ablate", model, *args]) == 0
    captured = capsys.readouterr()
    assert "rank" in captured.out and "provenance:" in captured.out
    assert "ablating 2/2" in captured.err
    assert main(["compare", model, *args]) == 1  # neither --weights-b nor --model-b
    assert "--weights-b" in capsys.readouterr().err
