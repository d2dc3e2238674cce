"""Plain values between the SDK's calls: the options of an extraction, and an analysis
response as the dict `neural_attn.analysis.summarize_layers` makes. Both the client and its
head-analysis calls use them, so they live below both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neural_attn import analysis, wire
from neural_attn.v1 import attention_pb2 as pb


def analysis_dict(r: pb.AnalyzeResponse) -> dict[str, Any]:
    """The response as the same dict `neural_attn.analysis.summarize_layers` makes."""
    layers: dict[str, dict[str, Any]] = {}
    for la in r.layers:
        heads = list(la.heads)
        per_head = {m.key: [getattr(h, m.wire) for h in heads] for m in analysis.METRICS}
        layers[la.layer_name] = {
            "shape": list(la.shape),
            **analysis.record(la.num_heads, per_head),
            # the means as the server sent them
            **{m.average: getattr(la, m.average) for m in analysis.averaged() if m.average},
        }
    rollout = wire.from_proto(r.rollout) if r.HasField("rollout") else None
    summary = {"model_id": r.model_id, "layers": layers, "rollout": rollout}
    if rollout is not None and r.HasField("rollout_pooling"):
        summary["rollout_pooling"] = analysis.rollout_pooling(
            r.rollout_pooling.source_length, r.rollout_pooling.block
        )
    return summary


@dataclass(frozen=True)
class ExtractOptions:
    """What an extraction asks beyond the model and its input (ExtractRequest's options)."""

    layers: Sequence[str] | None = None
    head: int | None = None
    dtype: str = "float32"
    max_chunk_bytes: int = 0
    sequence_length: int = 0
    window: tuple[tuple[int, int], tuple[int, int]] | None = None
    pool_size: int = 0
    pool_mode: str = "max"
