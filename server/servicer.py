"""The AttentionService servicer: messages in, engine calls, messages out. No error handling
here: errors are raised and the interceptor turns them into statuses."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import grpc
import numpy as np

from neural_attn.analysis import LayerAccumulator, Rollout, layer_metrics
from neural_attn.backends.base import stopped
from neural_attn.backends.streaming import Reduction, Tile, TiledReduction
from neural_attn.chunk_codec import Serialized
from neural_attn.dsl.ir import Layer
from neural_attn.errors import (
    InvalidInputError,
)
from neural_attn.server import convert
from neural_attn.server.analyses import HeadAnalyses
from neural_attn.server.engine import Engine, ExtractPlan
from neural_attn.server.resolve import Resolver
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc


def _stopper(context: grpc.ServicerContext) -> Callable[[], bool]:
    """Asked between layers: a cancelled call or a passed deadline stops the work."""
    return lambda: not context.is_active()


def _metrics(layers: Mapping[str, np.ndarray], context: grpc.ServicerContext) -> dict[str, Any]:
    """Metrics of each layer and the rollout, one layer at a time (blocks of rows inside);
    a cancelled call or a passed deadline stops them within a block."""
    metrics: dict[str, Any] = {}
    rollout = Rollout()
    for name, attention in layers.items():
        if not context.is_active():
            raise stopped()
        metrics[name] = layer_metrics(attention, should_stop=_stopper(context))
        rollout.add(attention)
    return _summary(metrics, rollout)


def _summary_of_tiles(
    tiles: Iterator[tuple[int, Layer, Tile]],
    should_stop: Callable[[], bool],
    pooling: Reduction | None = None,
) -> dict[str, Any]:
    """`summarize_layers`' dict, summed tile by tile as the pass computes them: the metrics
    and the rollout never need a whole layer (the rollout is pooled beyond its exact size).
    With `pooling`, "pooled" holds the layers it shrinks, pooled from the same exact tiles."""
    layers: dict[str, Any] = {}
    pooled: dict[str, np.ndarray] = {}
    rollout = Rollout()
    metrics: LayerAccumulator | None = None
    reducer: TiledReduction | None = None
    for _, layer, tile in tiles:
        values, start, step, last = tile.values, tile.start, tile.step, tile.last
        if metrics is None:
            batch, heads, _, keys = values.shape
            metrics = LayerAccumulator((batch, heads, tile.rows, keys))
            rollout.begin(keys, queries=tile.rows)
            if pooling is not None:
                reducer = TiledReduction(pooling, (batch, heads, tile.rows, keys))
        del tile
        metrics.add(start, values, should_stop=should_stop)
        rollout.add_rows(start, values)
        if reducer is not None and reducer.pooled:
            done = reducer.add_exact(start, step, values)
            if done is not None:
                pooled[layer.name] = done.values
        del values
        if last:
            layers[layer.name] = metrics.result()
            rollout.end()
            metrics = reducer = None
    summary = _summary(layers, rollout)
    if pooling is not None:
        summary["pooled"] = pooled
    return summary


def _summary(layers: dict[str, Any], rollout: Rollout) -> dict[str, Any]:
    """`analysis.summarize_layers`' dict: the metrics, the rollout and how it was pooled."""
    summary: dict[str, Any] = {"layers": layers, "rollout": rollout.result()}
    if rollout.pooling is not None:
        summary["rollout_pooling"] = rollout.pooling
    return summary


class AttentionServicer(pb_grpc.AttentionServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config
        self.resolve = Resolver(engine)
        self._info: pb.ServerInfo | None = None

    def server_info(self) -> pb.ServerInfo:
        """What GetServerInfo answers; made once (it imports every backend to ask it: seconds)."""
        if self._info is None:
            self._info = convert.server_info(self.config)
        return self._info

    def Compile(
        self, request: pb.CompileRequest, context: grpc.ServicerContext
    ) -> pb.CompileResponse:
        entry, cached = self.resolve.compile(request)
        return convert.compile_response(entry, cached=cached, filename=request.filename)

    def ExtractAttention(
        self, request: pb.ExtractRequest, context: grpc.ServicerContext
    ) -> Iterator[Serialized]:  # AttentionChunk messages, already serialized (chunk_codec)
        entry = self.resolve.model(request)
        plan = self.resolve.plan(request, entry, tiled=True)
        dtype = convert.output_dtype(request.output_dtype)
        max_bytes = convert.chunk_bytes(
            request.max_chunk_bytes,
            default=self.config.default_chunk_bytes,
            low=self.config.min_chunk_bytes,
            high=self.config.max_chunk_bytes,
        )
        if not context.is_active():
            return
        # Each layer (a long one tile by tile) is sent as the pass computes it; `del` lets it
        # go before the next exists.
        tiles = self.engine.tiles(entry, plan, should_stop=_stopper(context))
        try:
            for index, layer, tile in tiles:
                for chunk in convert.chunks(
                    model_id=entry.model_id,
                    name=layer.name,
                    index=index,
                    tile=tile,
                    dtype=dtype,
                    max_bytes=max_bytes,
                    head=plan.head,
                    reduction=convert.reduction_message(plan.reduction, plan.source_shape(layer)),
                ):
                    if not context.is_active():  # cancelled or past the deadline: stop the work
                        return
                    yield chunk
                del tile
        finally:
            tiles.close()

    def Analyze(
        self, request: pb.AnalyzeRequest, context: grpc.ServicerContext
    ) -> pb.AnalyzeResponse:
        which = request.WhichOneof("source")
        if which == "attention":
            # Arrays over the request's bytes, checked; metrics and rollout read one layer at
            # a time in blocks of rows, so the work costs about the rollout, not copies.
            arrays = convert.attention_set(
                request.attention,
                max_elements=self.config.max_attention_elements,
                max_length=self.config.max_sequence_length,
                should_stop=_stopper(context),
            )
            summary = _metrics(arrays, context)
            del arrays  # the tensors' bytes can go before the response is made
            return convert.analyze_response(summary)
        if which == "extract":
            if request.extract.HasField("window"):
                raise InvalidInputError(
                    "Analyze computes metrics of the exact attention: leave out the window "
                    "(ask ExtractAttention for one)"
                )
            entry = self.resolve.model(request.extract)
            plan = self.resolve.plan(request.extract, entry, tiled=True)  # pooled layers held
            pooling = self._pooled_in_reply(plan)
            exact = replace(plan, reduction=Reduction(head=plan.head))
            stop = _stopper(context)
            tiles = self.engine.tiles(entry, exact, should_stop=stop)
            try:
                summary = _summary_of_tiles(tiles, stop, pooling)
            finally:
                tiles.close()
            reductions = {
                layer.name: convert.reduction_message(plan.reduction, plan.source_shape(layer))
                for _, layer in plan.layers
            }
            return convert.analyze_response(
                summary, model_id=entry.model_id, first_head=plan.head or 0, reductions=reductions
            )
        raise InvalidInputError("an analyze request needs attention tensors or an extract request")

    def _pooled_in_reply(self, plan: ExtractPlan) -> Reduction | None:
        """The plan's pooling, without its head (the exact tiles have it), when the layers it
        shrinks fit in half of a message together; else None (none are sent)."""
        if not plan.reduction.pool_size:
            return None
        size = 0
        for _, layer in plan.layers:
            batch, heads, q, k = plan.source_shape(layer)
            pooling = plan.reduction.pooling((q, k))
            if pooling is not None and pooling.pooled:
                rows, cols = pooling.shape
                size += batch * (1 if plan.head is not None else heads) * rows * cols * 4
        if size > self.config.max_message_bytes // 2:
            return None
        return Reduction(pool_size=plan.reduction.pool_size, pool_mode=plan.reduction.pool_mode)

    def ExportWeights(
        self, request: pb.ExportWeightsRequest, context: grpc.ServicerContext
    ) -> pb.WeightsFile:
        fmt = convert.export_format(request.format)  # refused before compiling
        entry, _ = self.resolve.compile(request.model)
        content = self.engine.export_weights(entry, fmt=fmt)
        return convert.weights_file(entry.model_id, content)

    def GetServerInfo(
        self, request: pb.ServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.ServerInfo:
        return self.server_info()

    # -- head analyses: the work is in server/analyses.py ---------------------------------------
    def AnalyzeHeads(
        self, request: pb.HeadsRequest, context: grpc.ServicerContext
    ) -> pb.HeadsAnalysis:
        return HeadAnalyses(self.engine, self.resolve).analyze(request, context)

    def HeadSimilarity(
        self, request: pb.SimilarityRequest, context: grpc.ServicerContext
    ) -> pb.SimilarityResponse:
        return HeadAnalyses(self.engine, self.resolve).similarity(request, context)

    def AblateHeads(
        self, request: pb.AblationRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AblationUpdate]:
        return HeadAnalyses(self.engine, self.resolve).ablate(request, context)

    def ProfileHeads(
        self, request_iterator: Iterator[pb.ProfileRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ProfileUpdate]:
        return HeadAnalyses(self.engine, self.resolve).profile(request_iterator, context)

    def CompareCheckpoints(
        self, request: pb.CompareRequest, context: grpc.ServicerContext
    ) -> pb.CompareResponse:
        return HeadAnalyses(self.engine, self.resolve).compare(request, context)
