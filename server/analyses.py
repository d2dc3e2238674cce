"""The head-analysis RPCs (AnalyzeHeads, HeadSimilarity, AblateHeads, ProfileHeads,
CompareCheckpoints): messages in, `neural_attn.head_analysis` over engine passes, messages out.

Errors are raised (our error classes carry their status); the servicer's methods only delegate.
Every result carries a Provenance: source, backend, attention implementation, what was masked,
and the sanity of the attention the metrics read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from neural_attn import wire
from neural_attn.backends.head_masks import head_mask, private_copy
from neural_attn.errors import InvalidInputError
from neural_attn.head_analysis import (
    DEFAULT_REDUNDANCY_THRESHOLD,
    METRICS,
    QUANTILES,
    Mask,
    Profile,
    Sanity,
    compare_layer,
    mask_heads,
    masked_layer_metrics,
    similarity,
)
from neural_attn.server import convert
from neural_attn.server.engine import CompiledModel
from neural_attn.v1 import attention_pb2 as pb

if TYPE_CHECKING:
    from neural_attn.server.servicer import AttentionServicer

# Items (input items x ablated heads) one ablation pass runs at most, by default.
ABLATION_ITEMS_PER_PASS = 64
PROFILE_BATCH = 32


def _stopper(context: grpc.ServicerContext) -> Callable[[], bool]:
    return lambda: not context.is_active()


def mask_of(message: pb.AnalysisMask) -> Mask:
    return Mask(
        padding_id=int(message.padding_id) if message.mask_padding else None,
        positions=tuple(int(p) for p in message.positions),
    )


def _keep(mask: Mask, attention: np.ndarray, token_ids: np.ndarray | None) -> np.ndarray | None:
    if not mask.active:
        return None
    ids = token_ids if token_ids is not None and token_ids.ndim == 2 else None
    if mask.padding_id is not None and ids is None:
        raise InvalidInputError(
            "mask_padding needs token ids: the input is not (batch, seq) integer ids"
        )
    return mask.keep(attention.shape[0], attention.shape[-1], ids)


def provenance(
    entry: CompiledModel | None, sanity: Sanity, mask: Mask, *, items: int
) -> pb.Provenance:
    s = sanity.result()
    message = pb.Provenance(
        source="model" if entry is not None else "sent",
        dtype=s["dtype"],
        masked=mask.describe(),
        rows_sum_to_one=s["rows_sum_to_one"],
        max_row_error=s["max_row_error"],
        row_tolerance=s["tolerance"],
        finite=s["finite"],
        rows=s["rows"],
        fully_masked_rows=s["fully_masked_rows"],
        items=items,
    )
    if entry is not None:
        message.model_id = entry.model_id
        message.backend = entry.model.backend
        message.attention_path = entry.model.attention_path
        message.device = entry.model.device
        message.weights_sha256 = entry.weights_sha256
    else:
        message.attention_path = "sent by the caller"
    return message


def _ids(data: np.ndarray) -> np.ndarray | None:
    return data if np.issubdtype(data.dtype, np.integer) else None


class HeadAnalyses:
    """The head-analysis RPCs of one servicer (its engine, model resolution and limits)."""

    def __init__(self, servicer: AttentionServicer) -> None:
        self.servicer = servicer
        self.engine = servicer.engine
        self.config = servicer.engine.config

    # -- attention for AnalyzeHeads and HeadSimilarity -----------------------------------------
    def _layers(
        self, request: pb.HeadsRequest, context: grpc.ServicerContext
    ) -> tuple[CompiledModel | None, Iterator[tuple[str, np.ndarray]], np.ndarray | None, int]:
        """(model or None, (name, attention) per layer, token ids, first head)."""
        which = request.WhichOneof("source")
        if which == "attention":
            arrays = convert.attention_set(
                request.attention, max_elements=self.config.max_attention_elements
            )
            ids = wire.from_proto(request.token_ids) if request.HasField("token_ids") else None
            return None, iter(arrays.items()), ids, 0
        if which != "extract":
            raise InvalidInputError("a heads request needs attention tensors or an extract request")
        extract = request.extract
        if extract.HasField("window") or extract.HasField("pooling"):
            raise InvalidInputError(
                "head analyses read the exact attention: leave out window and pooling"
            )
        entry = self.servicer._resolve(extract)
        plan = self.servicer._plan(extract, entry)

        def layers() -> Iterator[tuple[str, np.ndarray]]:
            stream = self.engine.stream(entry, plan, should_stop=_stopper(context))
            try:
                for _, layer, attention in stream:
                    yield layer.name, attention
                    del attention
            finally:
                stream.close()

        return entry, layers(), _ids(plan.data), plan.head or 0

    def analyze(self, request: pb.HeadsRequest, context: grpc.ServicerContext) -> pb.HeadsAnalysis:
        mask = mask_of(request.mask)
        entry, layers, ids, first_head = self._layers(request, context)
        sanity = Sanity()
        metrics: dict[str, Any] = {}
        items = 0
        for name, attention in layers:
            sanity.add(attention)
            items = attention.shape[0]
            metrics[name] = masked_layer_metrics(attention, _keep(mask, attention, ids))
        response = convert.analyze_response(
            {"layers": metrics}, model_id=entry.model_id if entry else "", first_head=first_head
        )
        return pb.HeadsAnalysis(
            model_id=response.model_id,
            layers=response.layers,
            provenance=provenance(entry, sanity, mask, items=items),
        )

    def similarity(
        self, request: pb.SimilarityRequest, context: grpc.ServicerContext
    ) -> pb.SimilarityResponse:
        threshold = request.threshold or DEFAULT_REDUNDANCY_THRESHOLD
        mask = mask_of(request.heads.mask)
        entry, layers, ids, first_head = self._layers(request.heads, context)
        sanity = Sanity()
        # Pairs across layers need every layer at once (each is within the attention limits).
        held: dict[str, np.ndarray] = {}
        for name, attention in layers:
            sanity.add(attention)
            held[name] = mask_heads(attention, _keep(mask, attention, ids))
        result = similarity(held, threshold=threshold)
        items = next(iter(held.values())).shape[0] if held else 0
        return pb.SimilarityResponse(
            model_id=entry.model_id if entry else "",
            heads=[
                pb.HeadRef(layer=h["layer"], head=first_head + h["head"]) for h in result["heads"]
            ],
            distance=wire.to_proto(np.asarray(result["distance"], dtype=np.float64)),
            pairs=[
                pb.HeadPair(a=p["a"], b=p["b"], distance=p["distance"], same_layer=p["same_layer"])
                for p in result["pairs"]
            ],
            groups=[pb.HeadGroup(heads=g) for g in result["groups"]],
            threshold=threshold,
            provenance=provenance(entry, sanity, mask, items=items),
        )

    # -- ablation ------------------------------------------------------------------------------
    def ablate(
        self, request: pb.AblationRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AblationUpdate]:
        extract = request.extract
        entry = self.servicer._resolve(extract)
        plan = self.servicer._plan(extract, entry)
        data = plan.data
        sites = {layer.name: int(layer["num_heads"]) for _, layer in entry.network.attention_sites}
        asked = [(ref.layer, int(ref.head)) for ref in request.heads]
        heads = list(dict.fromkeys(asked)) or [
            (name, h) for name, count in sites.items() for h in range(count)
        ]
        for name, h in heads:
            if name not in sites:
                raise InvalidInputError(
                    f"no attention layer `{name}`; attention layers: {', '.join(sites)}"
                )
            if not 0 <= h < sites[name]:
                raise InvalidInputError(
                    f"head {h} does not exist in `{name}`, which has {sites[name]} heads"
                )
        batch = int(data.shape[0])
        per_pass = request.heads_per_pass or max(1, ABLATION_ITEMS_PER_PASS // batch)
        if per_pass < 0:
            raise InvalidInputError(f"heads_per_pass must be positive; got {per_pass}")
        # The repeated input is at most what one request may send (then plan checks the rest).
        per_pass = min(per_pass, len(heads), max(1, self.config.max_input_elements // data.size))
        # The largest pass is checked against every limit before anything runs.
        self.engine.plan(entry, data=np.concatenate([data] * per_pass), layer_names=(), head=None)

        model = private_copy(entry.model, seed=entry.seed, device=self.config.device)
        base, attention = model.forward(data, capture=list(sites), should_stop=_stopper(context))
        sanity = Sanity()
        labels: dict[str, list[str]] = {}
        for name, arr in attention.items():
            sanity.add(arr)
            labels[name] = masked_layer_metrics(arr)["pattern_per_head"]
        del attention
        softmax = _softmax_output(entry)
        impacts: list[dict[str, Any]] = []
        total = len(heads)
        yield pb.AblationUpdate(progress=pb.Progress(stage="ablating", done=0, total=total))
        for start in range(0, total, per_pass):
            group = heads[start : start + per_pass]
            masks = {
                name: np.ones((batch * len(group), count), np.float32)
                for name, count in sites.items()
            }
            for i, (name, h) in enumerate(group):
                masks[name][i * batch : (i + 1) * batch, h] = 0.0
            with head_mask(model, {k: v for k, v in masks.items() if (v == 0).any()}):
                out, _ = model.forward(
                    np.concatenate([data] * len(group)), should_stop=_stopper(context)
                )
            for i, (name, h) in enumerate(group):
                impacts.append(
                    {"layer": name, "head": h, "pattern": labels[name][h]}
                    | _output_change(base, out[i * batch : (i + 1) * batch], softmax=softmax)
                )
            if not context.is_active():
                return
            yield pb.AblationUpdate(
                progress=pb.Progress(stage="ablating", done=start + len(group), total=total)
            )
        key = "kl" if softmax else "l2"
        impacts.sort(key=lambda r: -r[key])
        yield pb.AblationUpdate(
            result=pb.AblationResult(
                model_id=entry.model_id,
                heads=[
                    pb.HeadImpact(
                        head=pb.HeadRef(layer=r["layer"], head=r["head"]),
                        rank=rank,
                        l2=r["l2"],
                        relative_l2=r["relative_l2"],
                        kl=r["kl"],
                        pattern=r["pattern"],
                    )
                    for rank, r in enumerate(impacts, start=1)
                ],
                softmax_output=softmax,
                ranked_by=key,
                provenance=provenance(entry, sanity, Mask(), items=batch),
            )
        )

    # -- profiles ------------------------------------------------------------------------------
    def profile(
        self, requests: Iterable[pb.ProfileRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ProfileUpdate]:
        stream = iter(requests)
        first = next(stream, None)
        if first is None:
            raise InvalidInputError("a profile stream needs a first message naming the model")
        which = first.WhichOneof("model")
        extract = pb.ExtractRequest()
        if which == "model_id":
            extract.model_id = first.model_id
        elif which == "compile":
            extract.compile.CopyFrom(first.compile)
        entry = self.servicer._resolve(extract)
        mask = mask_of(first.mask)
        layer_names = list(first.layer_names)
        size = first.batch_size or PROFILE_BATCH
        if size < 0:
            raise InvalidInputError(f"batch_size must be positive; got {size}")
        total = int(first.total_items)
        profile, sanity = Profile(), Sanity()
        done = 0

        def messages() -> Iterator[pb.ProfileRequest]:
            yield first
            yield from stream

        for message in messages():
            if not message.HasField("input"):
                continue
            data = convert.input_array(
                message.input,
                max_elements=self.config.max_input_elements,
                what="an input message",
                hint=" per message: send smaller batches",
            )
            if data.ndim < 2:
                raise InvalidInputError(
                    f"profile inputs are batches (batch, seq[, d]); got shape {data.shape}"
                )
            for start in range(0, data.shape[0], size):
                part = data[start : start + size]
                plan = self.engine.plan(entry, data=part, layer_names=layer_names, head=None)
                layers = self.engine.stream(entry, plan, should_stop=_stopper(context))
                try:
                    for _, layer, attention in layers:
                        sanity.add(attention)
                        profile.add(layer.name, attention, _keep(mask, attention, _ids(part)))
                        del attention
                finally:
                    layers.close()
                done += int(part.shape[0])
                if not context.is_active():
                    return
                yield pb.ProfileUpdate(
                    progress=pb.Progress(stage="profiling", done=done, total=max(total, done))
                )
        if done == 0:
            raise InvalidInputError("no inputs were sent to profile: send input batches")
        result = profile.result()
        heads = [
            pb.HeadProfile(
                head=pb.HeadRef(layer=layer, head=entry_["head"]),
                samples=entry_["samples"],
                metrics=[
                    pb.MetricDistribution(
                        metric=name,
                        mean=stat["mean"],
                        std=stat["std"],
                        quantiles=[stat["quantiles"][str(q)] for q in QUANTILES],
                    )
                    for name, stat in entry_["metrics"].items()
                ],
                labels=[pb.LabelShare(label=k, share=v) for k, v in entry_["labels"].items()],
            )
            for layer, rows in result["layers"].items()
            for entry_ in rows
        ]
        yield pb.ProfileUpdate(
            result=pb.ProfileResult(
                model_id=entry.model_id,
                heads=heads,
                quantile_levels=list(QUANTILES),
                exact_quantiles=result["exact_quantiles"],
                samples=done,
                provenance=provenance(entry, sanity, mask, items=done),
            )
        )

    # -- checkpoint comparison -----------------------------------------------------------------
    def compare(
        self, request: pb.CompareRequest, context: grpc.ServicerContext
    ) -> pb.CompareResponse:
        entry_a, _ = self.servicer._compile(request.model_a)
        entry_b, _ = self.servicer._compile(request.model_b)
        sites_a = [layer.name for _, layer in entry_a.network.attention_sites]
        sites_b = {layer.name for _, layer in entry_b.network.attention_sites}
        wanted = list(request.layer_names) or sites_a
        shared = [name for name in wanted if name in sites_a and name in sites_b]
        unmatched = sorted((set(sites_a) | sites_b) - set(shared))
        if not shared:
            raise InvalidInputError(
                "the two models share no attention layer name to compare: "
                f"{', '.join(sites_a)} vs {', '.join(sorted(sites_b))}"
            )
        data = None
        if request.HasField("input"):
            data = convert.input_array(request.input, max_elements=self.config.max_input_elements)
        plan_a = self.engine.plan(
            entry_a,
            data=data,
            layer_names=shared,
            head=None,
            sequence_length=request.sequence_length,
        )
        plan_b = self.engine.plan(entry_b, data=plan_a.data, layer_names=shared, head=None)
        mask = mask_of(request.mask)
        ids = _ids(plan_a.data)
        sanity_a, sanity_b = Sanity(), Sanity()
        # Model a's layers are held while model b runs (the two may be one cached model).
        held: dict[str, np.ndarray] = {}
        for _, layer, attention in self.engine.stream(
            entry_a, plan_a, should_stop=_stopper(context)
        ):
            sanity_a.add(attention)
            held[layer.name] = attention
        rows: list[dict[str, Any]] = []
        for _, layer, attention in self.engine.stream(
            entry_b, plan_b, should_stop=_stopper(context)
        ):
            sanity_b.add(attention)
            a = held.pop(layer.name)
            if a.shape != attention.shape:
                unmatched.append(layer.name)
                continue
            rows.extend(compare_layer(layer.name, a, attention, keep=_keep(mask, a, ids)))
        rows.sort(key=lambda r: -r["js_distance"])
        items = int(plan_a.data.shape[0])
        return pb.CompareResponse(
            model_id_a=entry_a.model_id,
            model_id_b=entry_b.model_id,
            heads=[
                pb.HeadComparison(
                    head=pb.HeadRef(layer=r["layer"], head=r["head"]),
                    rank=rank,
                    js_distance=r["js_distance"],
                    js_divergence=r["js_divergence"],
                    pattern_a=r["label_a"],
                    pattern_b=r["label_b"],
                    metrics=[
                        pb.MetricDelta(metric=m, a=r["a"][m], b=r["b"][m], delta=r["delta"][m])
                        for m in METRICS
                    ],
                )
                for rank, r in enumerate(rows, start=1)
            ],
            unmatched_layers=sorted(set(unmatched)),
            provenance_a=provenance(entry_a, sanity_a, mask, items=items),
            provenance_b=provenance(entry_b, sanity_b, mask, items=items),
        )


def _softmax_output(entry: CompiledModel) -> bool:
    last = entry.network.layers[-1] if entry.network.layers else None
    return bool(
        last is not None
        and last.type in ("Output", "Dense", "Activation")
        and last.get("activation") == "softmax"
    )


def _output_change(base: np.ndarray, ablated: np.ndarray, *, softmax: bool) -> dict[str, float]:
    """L2 (per item, over its whole output; mean over items) and, for softmax outputs, the mean
    KL(base || ablated) over items and positions, in nats."""
    y = base.astype(np.float64).reshape(base.shape[0], -1)
    z = ablated.astype(np.float64).reshape(ablated.shape[0], -1)
    l2 = float(np.linalg.norm(y - z, axis=1).mean())
    scale = float(np.linalg.norm(y, axis=1).mean())
    kl = 0.0
    if softmax:
        p = base.astype(np.float64)
        q = np.clip(ablated.astype(np.float64), 1e-12, None)
        terms = np.where(p > 0, p * np.log(np.clip(p, 1e-12, None) / q), 0.0)
        kl = float(max(0.0, terms.sum(axis=-1).mean()))
    return {"l2": l2, "relative_l2": l2 / scale if scale > 0 else 0.0, "kl": kl}


__all__ = ["HeadAnalyses", "mask_of", "provenance"]
