"""The head-analysis RPCs (AnalyzeHeads, HeadSimilarity, AblateHeads, ProfileHeads,
CompareCheckpoints): requests read here, `neural_attn.head_analysis` over engine passes, the
results handed to `convert` as plain values for the messages out.

Errors are raised (our error classes carry their status); the servicer's methods only delegate.
Every result carries a Provenance: source, backend, attention implementation, what was masked,
and the sanity of the attention the metrics read.

Every call's work is bounded before it starts, from shapes alone: the heads it reads
(max_analysis_heads; HeadSimilarity's pairs grow with their square: max_similarity_heads and
max_similarity_values), the layers it names (max_layers), the attention it holds at once
(max_held_attention_elements), the mask positions (the sequence length) and a profile's items
(max_profile_items). Long loops ask `_checker` about every block of work, so a cancelled call
or one past its deadline stops within tens of milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from neural_attn.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ResourceLimitError,
    excerpt,
)
from neural_attn.head_analysis import (
    DEFAULT_REDUNDANCY_THRESHOLD,
    Mask,
    Profile,
    Sanity,
    compare_layer,
    mask_heads,
    masked_layer_metrics,
    similarity,
    similarity_cost,
)
from neural_attn.server import convert
from neural_attn.server.engine import CompiledModel, Engine, ExtractPlan
from neural_attn.server.resolve import Resolver
from neural_attn.v1 import attention_pb2 as pb

# Items (input items x ablated heads) one ablation pass runs at most, by default.
ABLATION_ITEMS_PER_PASS = 64
PROFILE_BATCH = 32


# (layer name, (batch, heads, query, key)): what a call will read, known before it runs.
Shapes = list[tuple[str, tuple[int, int, int, int]]]


def _stopper(context: grpc.ServicerContext) -> Callable[[], bool]:
    """For passes, asked between layers: True once the call is cancelled or past its deadline."""

    def should_stop() -> bool:
        remaining = context.time_remaining()
        return not context.is_active() or (remaining is not None and remaining <= 0)

    return should_stop


def _checker(context: grpc.ServicerContext) -> Callable[[], bool]:
    """For the analyses' loops, asked between blocks of work: as `_stopper`, but past the
    deadline it raises DeadlineExceededError, so the log line and the metrics say which."""
    stopped = _stopper(context)

    def should_stop() -> bool:
        if not stopped():
            return False
        remaining = context.time_remaining()
        # gRPC cancels a call at its deadline a few ms before the clock here says it passed.
        if remaining is not None and remaining < 0.05:
            raise DeadlineExceededError(
                "the call ran past its deadline; the analysis stopped (give it a longer "
                "deadline, or ask for less: fewer layers, heads or items)"
            )
        return True

    return should_stop


def mask_of(message: pb.AnalysisMask, *, max_length: int) -> Mask:
    """The request's mask, its positions once each; more positions than the longest sequence
    this server runs (`max_length`) are refused from their count. They are checked against the
    sequence once its length is known (`Mask.resolved`)."""
    count = len(message.positions)
    if count > max_length:
        raise ResourceLimitError(
            f"the mask names {count:,} positions; a sequence on this server has at most "
            f"{max_length:,} (max_sequence_length): name each position once"
        )
    return Mask(
        padding_id=int(message.padding_id) if message.mask_padding else None,
        positions=tuple(sorted({int(p) for p in message.positions})),
    )


@dataclass(frozen=True)
class _Ids:
    """What a padding mask would read its token ids from (the input, or sent token_ids)."""

    data: np.ndarray | None
    what: str

    def for_mask(self, mask: Mask) -> np.ndarray | None:
        """The (batch, seq) integer ids when `mask` masks padding (else None); anything else
        is refused here, before any work, the same way for every source of ids."""
        if mask.padding_id is None:
            return None
        ids = self.data
        if ids is None:
            raise InvalidInputError(
                "mask_padding needs token ids: with sent attention, send token_ids "
                "((batch, seq) integer ids)"
            )
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise InvalidInputError(
                f"mask_padding needs token ids: {self.what} is not (batch, seq) integer ids "
                f"(it is {ids.dtype} of shape {tuple(ids.shape)})"
            )
        return ids


def _keep(mask: Mask, attention: np.ndarray, ids: np.ndarray | None) -> np.ndarray | None:
    """Bool (batch, key length) of the positions `mask` keeps; None when it masks nothing."""
    if not mask.active:
        return None
    return mask.keep(attention.shape[0], attention.shape[-1], ids)


def _shape4(shape: Iterable[int]) -> tuple[int, int, int, int]:
    batch, heads, q, k = (int(n) for n in shape)
    return batch, heads, q, k


def _key_lengths(shapes: Shapes) -> set[int]:
    return {shape[3] for _, shape in shapes}


def _sent_shapes(message: pb.AttentionSet) -> Shapes:
    """The shapes of sent attention as the message states them (checked when decoded)."""
    return [
        (named.name, _shape4(named.tensor.shape))
        for named in message.layers
        if len(named.tensor.shape) == 4
    ]


def _plan_shapes(plan: ExtractPlan) -> Shapes:
    """The (batch, heads, query, key) of each layer a planned pass yields."""
    out: Shapes = []
    for _, layer in plan.layers:
        batch, heads, q, k = plan.source_shape(layer)
        out.append((layer.name, (batch, 1 if plan.head is not None else heads, q, k)))
    return out


def _provenance(
    entry: CompiledModel | None, sanity: Sanity, mask: Mask, *, items: int
) -> pb.Provenance:
    return convert.provenance(entry, sanity.result(), masked=mask.describe(), items=items)


class HeadAnalyses:
    """The head-analysis RPCs: requests resolved into models and plans, run on the engine."""

    def __init__(self, engine: Engine, resolve: Resolver) -> None:
        self.resolve = resolve
        self.engine = engine
        self.config = engine.config

    # -- limits, checked from shapes before any work -------------------------------------------
    def _mask(self, message: pb.AnalysisMask) -> Mask:
        return mask_of(message, max_length=self.config.max_sequence_length)

    def _check_layer_count(self, count: int, what: str) -> None:
        limit = self.config.max_layers
        if count > limit:
            raise ResourceLimitError(
                f"{what} has {count:,} layers; this server reads at most {limit:,} in one "
                "call (max_layers)"
            )

    def _check_heads(self, shapes: Shapes, *, rpc: str, hint: str) -> None:
        heads = sum(shape[1] for _, shape in shapes)
        limit = self.config.max_analysis_heads
        if heads > limit:
            raise ResourceLimitError(
                f"{rpc} would read {heads:,} heads ({len(shapes):,} layers); this server "
                f"analyses at most {limit:,} heads in one call (max_analysis_heads): {hint}"
            )

    def _check_held(self, shapes: Shapes, *, rpc: str, hint: str) -> None:
        held = sum(math.prod(shape) for _, shape in shapes)
        limit = self.config.max_held_attention_elements
        if held > limit:
            raise ResourceLimitError(
                f"{rpc} holds the attention of every layer it reads at once: {held:,} values; "
                f"this server holds at most {limit:,} (max_held_attention_elements): {hint}"
            )

    def _check_similarity(self, shapes: Shapes, *, hint: str) -> None:
        """Heads (the answer is n x n), pairs x values (the work), held values (the memory)."""
        heads = sum(shape[1] for _, shape in shapes)
        limit = self.config.max_similarity_heads
        if heads > limit:
            raise ResourceLimitError(
                f"HeadSimilarity would compare {heads:,} heads ({heads * (heads - 1) // 2:,} "
                f"pairs, an answer of {heads:,} x {heads:,} distances); this server compares at "
                f"most {limit:,} heads in one call (max_similarity_heads): {hint}"
            )
        pairs, values = similarity_cost([shape for _, shape in shapes])
        limit = self.config.max_similarity_values
        if values > limit:
            raise ResourceLimitError(
                f"HeadSimilarity would compare {pairs:,} pairs of heads, {values:,} values "
                f"(pairs x values per head); this server compares at most {limit:,} in one call "
                f"(max_similarity_values): {hint}, or a shorter input"
            )
        self._check_held(shapes, rpc="HeadSimilarity", hint=hint)

    def _resolve_mask(self, mask: Mask, shapes: Shapes) -> Mask:
        """The mask's positions checked against the layers' lengths, collapsed and sorted."""
        return mask.resolved(_key_lengths(shapes))

    # -- attention for AnalyzeHeads and HeadSimilarity -----------------------------------------
    def _layers(
        self, request: pb.HeadsRequest, context: grpc.ServicerContext, *, rpc: str
    ) -> tuple[CompiledModel | None, Shapes, Iterator[tuple[str, np.ndarray]], _Ids, int]:
        """(model or None, the shapes it will read, (name, attention) per layer, token ids,
        first head). The shapes are known before anything runs; the layers are computed as
        they are read. `rpc` words the refusals (HeadSimilarity bounds more than the heads)."""
        which = request.WhichOneof("source")
        if which == "attention":
            sent = request.attention
            self._check_layer_count(len(sent.layers), "the attention sent")
            hint = "send fewer layers or heads"
            stated = _sent_shapes(sent)
            if rpc == "HeadSimilarity":
                self._check_similarity(stated, hint=hint)
            else:
                self._check_heads(stated, rpc=rpc, hint=hint)
            arrays = convert.attention_set(sent, max_elements=self.config.max_attention_elements)
            ids = None
            if request.HasField("token_ids"):
                ids = convert.input_array(
                    request.token_ids,
                    max_elements=self.config.max_input_elements,
                    what="token_ids",
                )
            shapes: Shapes = [(name, _shape4(arr.shape)) for name, arr in arrays.items()]
            return None, shapes, iter(arrays.items()), _Ids(ids, "token_ids"), 0
        if which != "extract":
            raise InvalidInputError("a heads request needs attention tensors or an extract request")
        extract = request.extract
        if extract.HasField("window") or extract.HasField("pooling"):
            raise InvalidInputError(
                "head analyses read the exact attention: leave out window and pooling"
            )
        self._check_layer_count(len(extract.layer_names), "layer_names")
        entry = self.resolve.model(extract)
        plan = self.resolve.plan(extract, entry)
        shapes = _plan_shapes(plan)
        hint = "ask for fewer layers (layer_names) or one head (head)"
        if rpc == "HeadSimilarity":
            self._check_similarity(shapes, hint=hint)
        else:
            self._check_heads(shapes, rpc=rpc, hint=hint)

        def layers() -> Iterator[tuple[str, np.ndarray]]:
            stream = self.engine.stream(entry, plan, should_stop=_stopper(context))
            try:
                for _, layer, attention in stream:
                    yield layer.name, attention
                    del attention
            finally:
                stream.close()

        return entry, shapes, layers(), _Ids(plan.data, "the input"), plan.head or 0

    def analyze(self, request: pb.HeadsRequest, context: grpc.ServicerContext) -> pb.HeadsAnalysis:
        mask = self._mask(request.mask)
        entry, shapes, layers, ids, first_head = self._layers(request, context, rpc="AnalyzeHeads")
        mask = self._resolve_mask(mask, shapes)
        tokens = ids.for_mask(mask)
        stop = _checker(context)
        sanity = Sanity()
        metrics: dict[str, Any] = {}
        items = 0
        for name, attention in layers:
            sanity.add(attention, should_stop=stop)
            items = attention.shape[0]
            metrics[name] = masked_layer_metrics(
                attention, _keep(mask, attention, tokens), should_stop=stop
            )
        return convert.heads_analysis(
            metrics,
            model_id=entry.model_id if entry else "",
            first_head=first_head,
            provenance=_provenance(entry, sanity, mask, items=items),
        )

    def similarity(
        self, request: pb.SimilarityRequest, context: grpc.ServicerContext
    ) -> pb.SimilarityResponse:
        threshold = request.threshold or DEFAULT_REDUNDANCY_THRESHOLD
        if not 0.0 <= threshold <= 1.0:
            raise InvalidInputError(
                f"the redundancy threshold is a JS distance in [0, 1]; got {threshold}"
            )
        mask = self._mask(request.heads.mask)
        entry, shapes, layers, ids, first_head = self._layers(
            request.heads, context, rpc="HeadSimilarity"
        )
        mask = self._resolve_mask(mask, shapes)
        tokens = ids.for_mask(mask)
        stop = _checker(context)
        sanity = Sanity()
        # Pairs across layers need every layer at once (bounded: max_held_attention_elements).
        held: dict[str, np.ndarray] = {}
        for name, attention in layers:
            sanity.add(attention, should_stop=stop)
            held[name] = mask_heads(attention, _keep(mask, attention, tokens), should_stop=stop)
        result = similarity(held, threshold=threshold, should_stop=stop)
        items = next(iter(held.values())).shape[0] if held else 0
        return convert.similarity_response(
            result,
            model_id=entry.model_id if entry else "",
            first_head=first_head,
            threshold=threshold,
            provenance=_provenance(entry, sanity, mask, items=items),
        )

    # -- ablation ------------------------------------------------------------------------------
    def ablate(
        self, request: pb.AblationRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AblationUpdate]:
        limit = self.config.max_analysis_heads
        hint = "ablate fewer heads (heads) per call"
        if len(request.heads) > limit:
            raise ResourceLimitError(
                f"AblateHeads names {len(request.heads):,} heads; this server ablates at most "
                f"{limit:,} in one call (max_analysis_heads): {hint}"
            )
        extract = request.extract
        entry = self.resolve.model(extract)
        plan = self.resolve.plan(extract, entry)
        data = plan.data
        sites = {layer.name: int(layer["num_heads"]) for _, layer in entry.network.attention_sites}
        asked = [(ref.layer, int(ref.head)) for ref in request.heads]
        if not asked and sum(sites.values()) > limit:
            raise ResourceLimitError(
                f"AblateHeads of every head would ablate {sum(sites.values()):,} heads "
                f"({len(sites):,} layers); this server ablates at most {limit:,} in one call "
                f"(max_analysis_heads): {hint}"
            )
        heads = list(dict.fromkeys(asked)) or [
            (name, h) for name, count in sites.items() for h in range(count)
        ]
        for name, h in heads:
            if name not in sites:
                raise InvalidInputError(
                    f"no attention layer `{excerpt(name)}`; attention layers: {', '.join(sites)}"
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

        stop, passes = _checker(context), _stopper(context)
        model = self.engine.private_model(entry)
        base, attention = model.forward(data, capture=list(sites), should_stop=passes)
        sanity = Sanity()
        labels: dict[str, list[str]] = {}
        for name, arr in attention.items():
            sanity.add(arr, should_stop=stop)
            labels[name] = masked_layer_metrics(arr, should_stop=stop)["pattern_per_head"]
        del attention
        softmax = _softmax_output(entry)
        impacts: list[dict[str, Any]] = []
        total = len(heads)
        yield convert.ablation_progress(0, total)
        for start in range(0, total, per_pass):
            group = heads[start : start + per_pass]
            masks = {
                name: np.ones((batch * len(group), count), np.float32)
                for name, count in sites.items()
            }
            for i, (name, h) in enumerate(group):
                masks[name][i * batch : (i + 1) * batch, h] = 0.0
            out = model.masked(
                np.concatenate([data] * len(group)),
                {k: v for k, v in masks.items() if (v == 0).any()},
                should_stop=passes,
            )
            for i, (name, h) in enumerate(group):
                impacts.append(
                    {"layer": name, "head": h, "pattern": labels[name][h]}
                    | _output_change(base, out[i * batch : (i + 1) * batch], softmax=softmax)
                )
            if not context.is_active():
                return
            yield convert.ablation_progress(start + len(group), total)
        key = "kl" if softmax else "l2"
        impacts.sort(key=lambda r: -r[key])
        yield convert.ablation_result(
            impacts,
            model_id=entry.model_id,
            softmax_output=softmax,
            ranked_by=key,
            provenance=_provenance(entry, sanity, Mask(), items=batch),
        )

    # -- profiles ------------------------------------------------------------------------------
    def profile(
        self, requests: Iterable[pb.ProfileRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ProfileUpdate]:
        stream = iter(requests)
        first = next(stream, None)
        if first is None:
            raise InvalidInputError("a profile stream needs a first message naming the model")
        extract = convert.profile_extract(first)
        mask = self._mask(first.mask)
        self._check_layer_count(len(first.layer_names), "layer_names")
        max_items = self.config.max_profile_items
        total = int(first.total_items)
        if total > max_items:
            raise ResourceLimitError(
                f"the profile announces {total:,} items; this server profiles at most "
                f"{max_items:,} in one stream (max_profile_items): split the data over streams"
            )
        entry = self.resolve.model(extract)
        layer_names = list(first.layer_names)
        sites = [
            (layer.name, int(layer["num_heads"]))
            for _, layer in entry.network.attention_sites
            if not layer_names or layer.name in layer_names
        ]
        self._check_heads(
            [(name, (1, heads, 1, 1)) for name, heads in sites],
            rpc="ProfileHeads",
            hint="profile fewer layers (layer_names) per stream",
        )
        size = first.batch_size or PROFILE_BATCH
        if size < 0:
            raise InvalidInputError(f"batch_size must be positive; got {size}")
        stop, passes = _checker(context), _stopper(context)
        profile, sanity = Profile(), Sanity()
        lengths: set[int] = set()
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
            if done + data.shape[0] > max_items:
                raise ResourceLimitError(
                    f"the profile would reach {done + data.shape[0]:,} items; this server "
                    f"profiles at most {max_items:,} in one stream (max_profile_items): split "
                    "the data over streams"
                )
            for start in range(0, data.shape[0], size):
                part = data[start : start + size]
                plan = self.engine.plan(entry, data=part, layer_names=layer_names, head=None)
                shapes = _plan_shapes(plan)
                batch_mask = self._resolve_mask(mask, shapes)  # refused before the pass
                tokens = _Ids(part, "the input").for_mask(batch_mask)
                lengths |= _key_lengths(shapes)
                layers = self.engine.stream(entry, plan, should_stop=passes)
                try:
                    for _, layer, attention in layers:
                        sanity.add(attention, should_stop=stop)
                        profile.add(
                            layer.name,
                            attention,
                            _keep(batch_mask, attention, tokens),
                            should_stop=stop,
                        )
                        del attention
                finally:
                    layers.close()
                done += int(part.shape[0])
                if not context.is_active():
                    return
                yield convert.profile_progress(done, max(total, done))
        if done == 0:
            raise InvalidInputError("no inputs were sent to profile: send input batches")
        yield convert.profile_result(
            profile.result(),
            model_id=entry.model_id,
            samples=done,
            provenance=_provenance(entry, sanity, mask.resolved(lengths), items=done),
        )

    # -- checkpoint comparison -----------------------------------------------------------------
    def compare(
        self, request: pb.CompareRequest, context: grpc.ServicerContext
    ) -> pb.CompareResponse:
        mask = self._mask(request.mask)
        self._check_layer_count(len(request.layer_names), "layer_names")
        entry_a, _ = self.resolve.compile(request.model_a)
        entry_b, _ = self.resolve.compile(request.model_b)
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
        shapes = _plan_shapes(plan_a)
        hint = "compare fewer layers (layer_names) per call"
        self._check_heads(shapes, rpc="CompareCheckpoints", hint=hint)
        self._check_held(shapes, rpc="CompareCheckpoints", hint=f"{hint}, or a shorter input")
        mask = self._resolve_mask(mask, shapes)
        tokens = _Ids(plan_a.data, "the input").for_mask(mask)
        stop, passes = _checker(context), _stopper(context)
        sanity_a, sanity_b = Sanity(), Sanity()
        # Model a's layers are held while model b runs (the two may be one cached model).
        held: dict[str, np.ndarray] = {}
        for _, layer, attention in self.engine.stream(entry_a, plan_a, should_stop=passes):
            sanity_a.add(attention, should_stop=stop)
            held[layer.name] = attention
        rows: list[dict[str, Any]] = []
        for _, layer, attention in self.engine.stream(entry_b, plan_b, should_stop=passes):
            sanity_b.add(attention, should_stop=stop)
            a = held.pop(layer.name)
            if a.shape != attention.shape:
                unmatched.append(layer.name)
                continue
            rows.extend(
                compare_layer(
                    layer.name, a, attention, keep=_keep(mask, a, tokens), should_stop=stop
                )
            )
        rows.sort(key=lambda r: -r["js_distance"])
        items = int(plan_a.data.shape[0])
        return convert.compare_response(
            rows,
            model_id_a=entry_a.model_id,
            model_id_b=entry_b.model_id,
            unmatched_layers=sorted(set(unmatched)),
            provenance_a=_provenance(entry_a, sanity_a, mask, items=items),
            provenance_b=_provenance(entry_b, sanity_b, mask, items=items),
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


__all__ = ["HeadAnalyses", "mask_of"]
