"""analysis.METRICS is the one list of per-head metrics: the proto, LayerMetrics and every table
follow it."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from neural_attn import analysis, head_analysis
from neural_attn.analysis import Metric
from neural_attn.client import _html, render
from neural_attn.v1 import attention_pb2 as pb


def test_registry_names_every_wire_field_with_its_number():
    head_fields = {f.name: f.number for f in pb.HeadMetrics.DESCRIPTOR.fields if f.name != "head"}
    assert {m.wire: m.number for m in analysis.METRICS} == head_fields
    layer_fields = {f.name: f.number for f in pb.LayerAnalysis.DESCRIPTOR.fields}
    for m in analysis.averaged():
        assert layer_fields[m.average] == m.average_number, m.key


def test_layer_metrics_annotation_names_the_registry():
    keys = set(typing.get_type_hints(analysis.LayerMetrics))
    expected = {m.key for m in analysis.per_head_lists()} | {m.average for m in analysis.averaged()}
    assert keys == expected | {"num_heads", "attention_distribution", "shape"}


def _peak_gap() -> Metric:
    # derived from numbers every head already has: row max minus the matrix mean
    return Metric(
        "peak_gap",
        "peak_gap",
        12,
        lambda h: [float(v) for v in h["numbers"]["row_max"] - h["numbers"]["mean"]],
        label="peak gap",
        column="peak_gap",
        console="peak gap",
        average="avg_peak_gap",
        average_number=8,
        in_profile_table=True,
        compare_column="d_peak_gap",
    )


def test_a_metric_added_to_the_registry_reaches_every_table(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(analysis, "METRICS", (*analysis.METRICS, _peak_gap()))
    rng = np.random.default_rng(0)
    attention = rng.random((1, 2, 6, 6))
    attention /= attention.sum(-1, keepdims=True)

    metrics = analysis.layer_metrics(attention)
    expected = attention.max(-1).mean(-1)[0] - attention.mean((-2, -1))[0]
    np.testing.assert_allclose(metrics["peak_gap"], expected)
    assert metrics["avg_peak_gap"] == pytest.approx(float(np.mean(expected)))

    # empty and averaged records (masked analyses)
    keep = np.ones((2, 6), dtype=bool)
    keep[1, 4:] = False
    masked = head_analysis.masked_layer_metrics(np.concatenate([attention, attention]), keep)
    assert len(masked["peak_gap"]) == 2 and "avg_peak_gap" in masked
    assert head_analysis._empty_metrics(2)["peak_gap"] == [0.0, 0.0]
    # profiles and comparisons carry it
    assert "peak_gap" in head_analysis.metric_names()
    assert "peak_gap" in head_analysis.flat_metrics(metrics, 0)

    # the page: its side panel's data and its metrics table
    panel = _html._head_metrics(metrics)
    assert panel["per_head"]["peak gap"] == metrics["peak_gap"]
    assert panel["mean"]["peak gap"] == metrics["avg_peak_gap"]
    assert "<th>peak gap</th>" in _html._metrics_table("layer", metrics)

    # the console summary
    summary = render.format_console_summary({"layer": attention}, {"layer": metrics})
    assert "peak gap" in summary
    assert f"{metrics['peak_gap'][0]:>8.4f}" in summary

    # the CLI: analyze's columns, profile's table, compare's deltas read the registry
    from neural_attn.client import _analysis_cli

    assert "peak_gap" in [m.column for m in _analysis_cli._columns()]
    assert any(m.compare_column == "d_peak_gap" for m in analysis.METRICS)

    # the wire: a new metric needs its HeadMetrics field (attention.proto, then `make proto`);
    # without it the reply fails loudly rather than dropping the metric
    from neural_attn.server import convert

    with pytest.raises(ValueError, match="peak_gap"):
        convert.analyze_response({"layers": {"layer": metrics}})
