"""The head analyses of `AttentionClient` (a mixin): requests out, plain dicts back.

Dicts keep the documented metric names (``attention_entropy``,
``max_attention_per_head``, ...), as `AttentionClient.analyze` does. Every result holds a
``"provenance"`` dict: where the attention came from, what was masked, and its sanity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from neural_attn import wire
from neural_attn.client._messages import ExtractOptions, analysis_dict
from neural_attn.errors import InvalidInputError
from neural_attn.v1 import attention_pb2 as pb

Progress = Callable[[dict[str, Any]], None]
HeadSpec = tuple[str, int]


def provenance_dict(p: pb.Provenance) -> dict[str, Any]:
    return {
        "source": p.source,
        "model_id": p.model_id,
        "backend": p.backend,
        "attention_path": p.attention_path,
        "device": p.device,
        "weights_sha256": p.weights_sha256,
        "dtype": p.dtype,
        "masked": list(p.masked),
        "rows_sum_to_one": p.rows_sum_to_one,
        "max_row_error": p.max_row_error,
        "row_tolerance": p.row_tolerance,
        "finite": p.finite,
        "rows": p.rows,
        "fully_masked_rows": p.fully_masked_rows,
        "items": p.items,
    }


def attention_set(attention: Mapping[str, np.ndarray]) -> pb.AttentionSet:
    """Attention the caller sends: each layer's (batch, heads, q, k) as float32."""
    return pb.AttentionSet(
        layers=[
            pb.NamedTensor(name=name, tensor=wire.to_proto(np.asarray(a, dtype=np.float32)))
            for name, a in attention.items()
        ]
    )


def _mask(mask_padding: bool, padding_id: int, exclude_positions: Sequence[int]) -> pb.AnalysisMask:
    return pb.AnalysisMask(
        mask_padding=mask_padding, padding_id=padding_id, positions=list(exclude_positions)
    )


def _progress(update: pb.Progress, callback: Progress | None) -> None:
    if callback is not None:
        callback({"stage": update.stage, "done": update.done, "total": update.total})


def _profile_requests(
    first: pb.ProfileRequest, batches: Iterable[np.ndarray]
) -> Iterator[pb.ProfileRequest]:
    """`first` (the options) with the first batch, then one message per further batch."""
    message = first
    for batch in batches:
        message.input.CopyFrom(wire.to_proto(np.asarray(batch)))
        yield message
        message = pb.ProfileRequest()
    if message is first:
        yield first


def _profile_dict(r: pb.ProfileResult) -> dict[str, Any]:
    """ProfileHeads' answer as `profile_heads` documents it."""
    levels = [str(q) for q in r.quantile_levels]
    layers_out: dict[str, list[dict[str, Any]]] = {}
    for h in r.heads:
        layers_out.setdefault(h.head.layer, []).append(
            {
                "head": h.head.head,
                "samples": h.samples,
                "metrics": {
                    m.metric: {
                        "mean": m.mean,
                        "std": m.std,
                        "quantiles": dict(zip(levels, m.quantiles, strict=True)),
                    }
                    for m in h.metrics
                },
                "labels": {s.label: s.share for s in h.labels},
            }
        )
    return {
        "model_id": r.model_id,
        "samples": r.samples,
        "quantile_levels": list(r.quantile_levels),
        "exact_quantiles": r.exact_quantiles,
        "layers": layers_out,
        "provenance": provenance_dict(r.provenance),
    }


class HeadAnalysisMixin:
    """Head analyses over the wire; mixed into `AttentionClient` (which has the stub)."""

    _sources: Any

    if TYPE_CHECKING:  # AttentionClient's, which makes every call

        def _unary(self, method: str, request: Any) -> Any: ...

        def _streamed(self, method: str, request: Any) -> Iterator[Any]: ...

        def _extract_request(
            self, model: Any, data: np.ndarray | None, options: Any, *, inline: bool
        ) -> pb.ExtractRequest: ...

    def _rpc_updates(self, method: str, request: Any, progress: Progress | None) -> Any:
        """Read a progress stream to its end (so the server's call ends OK, not cancelled);
        returns its `result`."""
        result = None
        for update in self._streamed(method, request):
            if update.WhichOneof("update") == "progress":
                _progress(update.progress, progress)
            elif result is None:
                result = update.result
        if result is None:
            raise InvalidInputError(f"{method} ended without a result")
        return result

    def _heads_request(
        self,
        attention: Mapping[str, np.ndarray] | None,
        model: Any,
        data: np.ndarray | None,
        *,
        layers: Sequence[str] | None,
        sequence_length: int,
        mask: pb.AnalysisMask,
        token_ids: np.ndarray | None,
    ) -> pb.HeadsRequest:
        if (attention is None) == (model is None):
            raise InvalidInputError("give either attention tensors or a model, not both")
        if attention is not None:
            request = pb.HeadsRequest(attention=attention_set(attention), mask=mask)
            if token_ids is not None:
                request.token_ids.CopyFrom(wire.to_proto(np.asarray(token_ids)))
            return request
        options = ExtractOptions(layers, None, sequence_length=sequence_length)
        extract = self._extract_request(model, data, options, inline=self._inline_ok(model))
        return pb.HeadsRequest(extract=extract, mask=mask)

    def _inline_ok(self, model: Any) -> bool:
        """Send the compile request inline when we have it: any replica can serve then."""
        model_id = getattr(model, "model_id", model)
        return model_id in self._sources

    def _compile_request_of(self, model: Any) -> pb.CompileRequest:
        model_id = getattr(model, "model_id", model)
        if model_id not in self._sources:
            raise InvalidInputError(
                f"model {model_id!r} was not compiled by this client: compile it first"
            )
        request: pb.CompileRequest = self._sources[model_id]
        return request

    # -- the analyses --------------------------------------------------------------------------
    def analyze_heads(
        self,
        attention: Mapping[str, np.ndarray] | None = None,
        *,
        model: Any = None,
        data: np.ndarray | None = None,
        layers: Sequence[str] | None = None,
        sequence_length: int = 0,
        mask_padding: bool = False,
        padding_id: int = 0,
        exclude_positions: Sequence[int] = (),
        token_ids: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Per-head metrics (as `analyze`) with padding and chosen positions left out.

        Returns ``{"model_id", "layers": {name: metrics}, "provenance"}``.
        """
        request = self._heads_request(
            attention,
            model,
            data,
            layers=layers,
            sequence_length=sequence_length,
            mask=_mask(mask_padding, padding_id, exclude_positions),
            token_ids=token_ids,
        )
        r = self._unary("AnalyzeHeads", request)
        out = analysis_dict(pb.AnalyzeResponse(model_id=r.model_id, layers=r.layers))
        out.pop("rollout", None)
        out["provenance"] = provenance_dict(r.provenance)
        return out

    def head_similarity(
        self,
        attention: Mapping[str, np.ndarray] | None = None,
        *,
        model: Any = None,
        data: np.ndarray | None = None,
        layers: Sequence[str] | None = None,
        sequence_length: int = 0,
        threshold: float = 0.0,
        mask_padding: bool = False,
        padding_id: int = 0,
        exclude_positions: Sequence[int] = (),
        token_ids: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Jensen-Shannon distance (log base 2) between every pair of heads, across layers too.

        Returns ``{"model_id", "heads": [{"layer", "head"}], "distance": (n, n) array,
        "pairs": [{"a", "b", "distance", "same_layer"}] closest first (a, b index "heads"),
        "groups": [[{"layer", "head"}, ...]] of redundant heads, "threshold", "provenance"}``.
        """
        heads = self._heads_request(
            attention,
            model,
            data,
            layers=layers,
            sequence_length=sequence_length,
            mask=_mask(mask_padding, padding_id, exclude_positions),
            token_ids=token_ids,
        )
        r = self._unary("HeadSimilarity", pb.SimilarityRequest(heads=heads, threshold=threshold))
        refs = [{"layer": h.layer, "head": h.head} for h in r.heads]
        return {
            "model_id": r.model_id,
            "heads": refs,
            "distance": wire.from_proto(r.distance),
            "pairs": [
                {"a": p.a, "b": p.b, "distance": p.distance, "same_layer": p.same_layer}
                for p in r.pairs
            ],
            "groups": [[refs[i] for i in g.heads] for g in r.groups],
            "threshold": r.threshold,
            "provenance": provenance_dict(r.provenance),
        }

    def ablate_heads(
        self,
        model: Any,
        data: np.ndarray | None = None,
        *,
        heads: Sequence[HeadSpec] | None = None,
        heads_per_pass: int = 0,
        sequence_length: int = 0,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Zero each head (or those in `heads`, (layer, head) pairs) before its output
        projection and measure the model output's change; batched passes on the server.

        Returns ``{"model_id", "ranked_by", "softmax_output", "heads": [{"layer", "head",
        "rank", "l2", "relative_l2", "kl", "pattern"}] largest change first, "provenance"}``.
        """
        options = ExtractOptions(None, None, sequence_length=sequence_length)
        extract = self._extract_request(model, data, options, inline=self._inline_ok(model))
        request = pb.AblationRequest(
            extract=extract,
            heads=[pb.HeadRef(layer=layer, head=h) for layer, h in heads or ()],
            heads_per_pass=heads_per_pass,
        )
        r = self._rpc_updates("AblateHeads", request, progress)
        return {
            "model_id": r.model_id,
            "ranked_by": r.ranked_by,
            "softmax_output": r.softmax_output,
            "heads": [
                {
                    "layer": h.head.layer,
                    "head": h.head.head,
                    "rank": h.rank,
                    "l2": h.l2,
                    "relative_l2": h.relative_l2,
                    "kl": h.kl,
                    "pattern": h.pattern,
                }
                for h in r.heads
            ],
            "provenance": provenance_dict(r.provenance),
        }

    def profile_heads(
        self,
        model: Any,
        batches: Iterable[np.ndarray],
        *,
        layers: Sequence[str] | None = None,
        batch_size: int = 0,
        total_items: int = 0,
        mask_padding: bool = False,
        padding_id: int = 0,
        exclude_positions: Sequence[int] = (),
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Per head, the distribution of every metric over all items of `batches` (arrays of
        inputs, sent one message each) and the share of each pattern label.

        Returns ``{"model_id", "samples", "quantile_levels", "exact_quantiles", "layers":
        {layer: [{"head", "samples", "metrics": {name: {"mean", "std", "quantiles":
        {level: value}}}, "labels": {label: share}}]}, "provenance"}``.
        """
        first = pb.ProfileRequest(
            mask=_mask(mask_padding, padding_id, exclude_positions),
            layer_names=list(layers or ()),
            batch_size=batch_size,
            total_items=total_items,
        )
        if self._inline_ok(model):
            first.compile.CopyFrom(self._compile_request_of(model))
        else:
            first.model_id = getattr(model, "model_id", model)

        r = self._rpc_updates("ProfileHeads", _profile_requests(first, batches), progress)
        return _profile_dict(r)

    def compare_checkpoints(
        self,
        model_a: Any,
        model_b: Any,
        data: np.ndarray | None = None,
        *,
        layers: Sequence[str] | None = None,
        sequence_length: int = 0,
        mask_padding: bool = False,
        padding_id: int = 0,
        exclude_positions: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Two compiled models (one source with two weight files, or two models of the same
        architecture) on the same input: per matched head, metric deltas (b - a) and JS.

        Returns ``{"model_id_a", "model_id_b", "heads": [{"layer", "head", "rank",
        "js_distance", "js_divergence", "pattern_a", "pattern_b", "metrics": {name: {"a", "b",
        "delta"}}}] largest JS first, "unmatched_layers", "provenance_a", "provenance_b"}``.
        """
        request = pb.CompareRequest(
            model_a=self._compile_request_of(model_a),
            model_b=self._compile_request_of(model_b),
            sequence_length=sequence_length,
            mask=_mask(mask_padding, padding_id, exclude_positions),
            layer_names=list(layers or ()),
        )
        if data is not None:
            request.input.CopyFrom(wire.to_proto(np.asarray(data)))
        r = self._unary("CompareCheckpoints", request)
        return {
            "model_id_a": r.model_id_a,
            "model_id_b": r.model_id_b,
            "heads": [
                {
                    "layer": h.head.layer,
                    "head": h.head.head,
                    "rank": h.rank,
                    "js_distance": h.js_distance,
                    "js_divergence": h.js_divergence,
                    "pattern_a": h.pattern_a,
                    "pattern_b": h.pattern_b,
                    "metrics": {
                        m.metric: {"a": m.a, "b": m.b, "delta": m.delta} for m in h.metrics
                    },
                }
                for h in r.heads
            ],
            "unmatched_layers": list(r.unmatched_layers),
            "provenance_a": provenance_dict(r.provenance_a),
            "provenance_b": provenance_dict(r.provenance_b),
        }
