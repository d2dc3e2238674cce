"""Plain values between the SDK's calls: the options of an extraction, and an analysis
response as the dict `neural_attn.analysis.summarize_layers` makes. Both the client and its
head-analysis calls use them, so they live below both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neural_attn import analysis, wire
from neural_attn.client._sinks import LayerHeader
from neural_attn.pooling import Pooling
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
    summary: dict[str, Any] = {"model_id": r.model_id, "layers": layers, "rollout": rollout}
    if rollout is not None and r.HasField("rollout_pooling"):
        summary["rollout_pooling"] = analysis.rollout_pooling(
            r.rollout_pooling.source_length, r.rollout_pooling.block
        )
    if r.pooled:
        summary["pooled"] = {p.layer_name: pooled_layer(p) for p in r.pooled}
    return summary


def pooling_of(r: pb.Reduction) -> Pooling:
    """A `Reduction` message as the `Pooling` it describes."""
    return Pooling(
        source_shape=tuple(int(n) for n in r.source_shape),
        query=(int(r.query_start), int(r.query_stop)),
        key=(int(r.key_start), int(r.key_stop)),
        query_block=int(r.query_block),
        key_block=int(r.key_block),
        mode="mean" if r.mode == pb.MEAN else "max",
    )


def pooled_layer(p: pb.PooledAttention) -> ExtractedLayer:
    """One of an AnalyzeResponse's pooled layers."""
    value = wire.from_proto(p.attention)
    pooling = pooling_of(p.reduction) if p.HasField("reduction") else None
    return ExtractedLayer(p.layer_name, -1, tuple(value.shape), value.dtype, None, pooling, value)


@dataclass(frozen=True)
class ExtractedLayer:
    """One layer of an extraction: its header fields and what the sink made of it."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    head: int | None
    pooling: Pooling | None
    value: Any

    @classmethod
    def of(cls, header: LayerHeader, value: Any) -> ExtractedLayer:
        return cls(
            header.name,
            header.index,
            header.shape,
            header.dtype,
            header.head,
            header.pooling,
            value,
        )


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
