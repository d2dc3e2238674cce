"""Server-side conversion between proto messages and the engine's values (the one such module)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from neural_attn import __version__, analysis, chunk_codec, wire
from neural_attn.analysis import StopCheck, check_stop, row_tolerance
from neural_attn.backends import info, weight_files
from neural_attn.backends.base import BACKENDS, input_forms
from neural_attn.backends.streaming import Reduction, Tile
from neural_attn.dsl.ir import Network
from neural_attn.errors import InvalidInputError, ResourceLimitError, excerpt
from neural_attn.head_analysis import QUANTILES
from neural_attn.server.config import ServerConfig
from neural_attn.server.engine import CompiledModel
from neural_attn.v1 import attention_pb2 as pb

# Bytes a chunk's fields other than `content`, the strings aside, may take at most: 11 varint
# fields (<= 11 bytes each with its tag), 4 shape dims, length prefixes.
_CHUNK_FIXED_OVERHEAD = 192


def backend_name(code: Any, default: str) -> str:
    if code == pb.BACKEND_UNSPECIFIED:
        return default
    try:
        return wire.BACKEND_NAMES[code]
    except KeyError:
        raise InvalidInputError(f"unknown backend code {code}") from None


def _dims(shape: tuple[int | None, ...]) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def _embedding_fields(net: Network) -> dict[str, Any]:
    """CompileResponse's embedding_layer and vocab_size: the Embedding that takes token ids."""
    first = net.layers[0] if net.layers else None
    if first is None or first.type != "Embedding":
        return {}
    return {"embedding_layer": first.name, "vocab_size": int(first["input_dim"])}


def compile_response(
    entry: CompiledModel, *, cached: bool, filename: str = ""
) -> pb.CompileResponse:
    net, model = entry.network, entry.model
    return pb.CompileResponse(
        model_id=entry.model_id,
        backend=wire.BACKEND_CODES[model.backend],
        network_name=net.name,
        generated_code=entry.code(filename),
        layers=[
            pb.LayerInfo(
                name=layer.name,
                type=layer.type,
                input_shape=_dims(layer.input_shape),
                output_shape=_dims(layer.output_shape),
                is_attention=layer.is_attention,
                num_heads=int(layer["num_heads"]) if layer.is_attention else 0,
                line=layer.pos.line,
            )
            for layer in net.layers
        ],
        attention_layers=[layer.name for layer in net.attention_layers],
        inputs=[
            pb.InputSpec(
                shape=_dims(form.shape),
                dtype=wire.dtype_code(np.dtype(form.dtype)),
                description=form.description,
            )
            for form in input_forms(net)
        ],
        **_embedding_fields(net),
        warnings=[*net.warnings, *_placement_notes(net, model.device)],
        device=model.device,
        parameter_count=model.parameter_count(),
        attention_path=model.attention_path,
        cached=cached,
        weights_sha256=entry.weights_sha256,
    )


def _placement_notes(net: Network, served: str) -> list[str]:
    """Say where the model really runs when the file asks for a device of its own."""
    notes = []
    requested = dict(net.execution).get("device")
    if requested is not None:
        value = getattr(requested, "name", requested)
        notes.append(
            f"`execution {{ device: {value} }}` is noted, but this server runs the whole model on "
            f"{served} (chosen by neural-attn-server --device)"
        )
    placed = [f"`{layer.name}` @ {layer.device}" for layer in net.layers if layer.device]
    if placed:
        notes.append(
            f"per-layer placement ({', '.join(placed)}) is noted, but the whole model runs on "
            f"{served}"
        )
    return notes


def weights_format(code: Any) -> str | None:
    """The weights format named in a request; None when it is left to be guessed."""
    if code == pb.WEIGHTS_FORMAT_UNSPECIFIED:
        return None
    try:
        return wire.WEIGHTS_FORMAT_NAMES[code]
    except KeyError:
        raise InvalidInputError(f"unknown weights format code {code}") from None


def export_format(code: Any) -> str:
    """The neutral format ExportWeights writes: .npz unless the request asks otherwise."""
    fmt = weights_format(code) or weight_files.NPZ
    if fmt not in weight_files.NEUTRAL_FORMATS:
        raise InvalidInputError(
            f"weights are exported as {' or '.join(weight_files.NEUTRAL_FORMATS)}, not {fmt}: "
            "both load into either backend"
        )
    return fmt


def server_info(config: ServerConfig) -> pb.ServerInfo:
    return pb.ServerInfo(
        version=__version__,
        backends=[
            pb.BackendInfo(
                name=s.name,
                available=s.available,
                version=s.version,
                device=s.device,
                detail=s.detail,
            )
            for s in (info.status(name, config.device) for name in BACKENDS)
        ],
        default_backend=config.default_backend,
        max_message_bytes=config.max_message_bytes,
        max_sequence_length=config.max_sequence_length,
        weights_directory=bool(config.weights_dir),
    )


def input_array(
    tensor: pb.Tensor, *, max_elements: int, what: str = "input", hint: str = ""
) -> np.ndarray:
    """A request's input tensor, refused before anything is decoded when it has more than
    `max_elements` elements (`what` and `hint` word the refusal)."""
    count = wire.element_count(tensor)
    if count > max_elements:
        raise ResourceLimitError(
            f"{what} has {count} elements; this server accepts at most {max_elements}{hint}"
        )
    return wire.from_proto(tensor)


def output_dtype(code: int) -> np.dtype:
    if code in (pb.DTYPE_UNSPECIFIED, pb.FLOAT32):
        return np.dtype("<f4")
    if code == pb.FLOAT16:
        return np.dtype("<f2")
    raise InvalidInputError("output_dtype must be FLOAT32 or FLOAT16")


def chunk_bytes(requested_bytes: int, *, default: int, low: int, high: int) -> int:
    """The chunk size a request asks for, within the server's bounds."""
    size = requested_bytes or default
    if size < low:
        raise InvalidInputError(f"max_chunk_bytes must be at least {low}; got {size}")
    return min(size, high)


def window(request: pb.ExtractRequest) -> tuple[tuple[int, int], tuple[int, int]] | None:
    if not request.HasField("window"):
        return None
    w = request.window
    return (w.query_start, w.query_stop), (w.key_start, w.key_stop)


_POOL_MODES = {pb.POOL_MODE_UNSPECIFIED: "max", pb.MAX: "max", pb.MEAN: "mean"}


def pooling(request: pb.ExtractRequest) -> tuple[int, str]:
    """(target size, mode); a target of 0 means no pooling."""
    if not request.HasField("pooling"):
        return 0, "max"
    mode = _POOL_MODES.get(request.pooling.mode)
    if mode is None:
        raise InvalidInputError(f"unknown pool mode {request.pooling.mode}; use MAX or MEAN")
    if request.pooling.target_size <= 0:
        raise InvalidInputError(
            f"pooling.target_size must be at least 1; got {request.pooling.target_size}"
        )
    return request.pooling.target_size, mode


def reduction_message(reduction: Reduction, source_shape: tuple[int, ...]) -> pb.Reduction | None:
    """How a layer of `source_shape` was reduced; None when it is sent exact and whole."""
    pooling = reduction.pooling(source_shape)
    if pooling is None:
        return None
    return pb.Reduction(
        source_shape=list(pooling.source_shape),
        query_start=pooling.query[0],
        query_stop=pooling.query[1],
        key_start=pooling.key[0],
        key_stop=pooling.key[1],
        query_block=pooling.query_block,
        key_block=pooling.key_block,
        mode=pb.MEAN if pooling.mode == "mean" else pb.MAX,
    )


def chunks(
    *,
    model_id: str,
    name: str,
    index: int,
    tile: Tile,
    dtype: np.dtype,
    max_bytes: int,
    head: int | None,
    reduction: pb.Reduction | None = None,
) -> Iterator[chunk_codec.Serialized]:
    """Split one tile of a layer's attention into AttentionChunk messages of at most
    `max_bytes` each; a whole layer is one tile.

    Each chunk's content is a view of the tile (converted to `dtype` a chunk at a time) copied
    once, into the message's wire bytes (`chunk_codec`): no second copy is made. A whole layer
    goes front to back; a tile of rows goes as each (batch item, head)'s rows, which are
    contiguous in the layer's C order. Every chunk says the layer's shape, where it lies
    (offset) and its place among all the layer's chunks, counted over the tile schedule.
    """
    extra = reduction.ByteSize() + 4 if reduction is not None else 0
    overhead = _CHUNK_FIXED_OVERHEAD + extra + len(name.encode()) + len(model_id.encode())
    per_chunk = max(1, (max_bytes - overhead) // dtype.itemsize)
    values = np.ascontiguousarray(tile.values)  # a view: the backends hand C-order arrays
    batch, heads, _, keys = values.shape
    shape = (batch, heads, tile.rows, keys)

    def count(start: int, stop: int) -> int:
        if stop - start == tile.rows:
            return max(1, -(-math.prod(shape) // per_chunk))
        return batch * heads * -(-((stop - start) * keys) // per_chunk)

    schedule = tile.schedule()
    first = sum(count(a, b) for a, b in schedule if b <= tile.start)
    header = pb.AttentionChunk(
        model_id=model_id,
        layer_name=name,
        layer_index=index,
        shape=list(shape),
        dtype=wire.dtype_code(dtype),
        num_chunks=sum(count(a, b) for a, b in schedule),
        head=-1 if head is None else head,
    )
    if reduction is not None:
        header.reduction.CopyFrom(reduction)
    if tile.is_whole:
        ranges = [(0, values.reshape(-1))]
    else:
        ranges = [
            (((b * heads + h) * tile.rows + tile.start) * keys, values[b, h].reshape(-1))
            for b in range(batch)
            for h in range(heads)
        ]
    i = first
    for base, flat in ranges:
        for start in range(0, max(flat.size, 1), per_chunk):
            part = flat[start : start + per_chunk]
            header.offset = base + start
            header.element_count = int(part.size)
            header.chunk_index = i
            i += 1
            yield chunk_codec.encode(header, wire.cast(part, dtype))


# Rows of one block of the row-sum check: the float64 sums of a block are the extra memory.
_CHECK_BLOCK_ELEMENTS = 1 << 22


def attention_set(
    message: pb.AttentionSet,
    *,
    max_elements: int,
    max_length: int | None = None,
    should_stop: StopCheck = None,
) -> dict[str, np.ndarray]:
    """Caller-sent attention as read-only arrays over the request's bytes, layer name ->
    (batch, heads, query, key); each layer's size is checked before anything is decoded.

    The limits are those of a layer the server computes itself: `max_elements` bounds one
    layer (a pass holds one layer at a time, and Analyze reads one at a time), `max_length`
    its query and key lengths (the rollout holds a float64 key x key matrix; None: no bound,
    for callers that hold no such matrix). All layers
    together are bounded by the request's size (max_message_bytes).
    """
    for named in message.layers:
        if not named.name:
            raise InvalidInputError("every attention tensor needs a layer name")
        size = wire.element_count(named.tensor)
        if size > max_elements:
            raise ResourceLimitError(
                f"the attention sent for `{excerpt(named.name)}` has {size:,} values; this "
                f"server analyses layers of at most {max_elements:,} (max_attention_elements)"
            )
        longest = max(named.tensor.shape[-2:], default=0)
        if max_length is not None and longest > max_length:
            raise ResourceLimitError(
                f"the attention sent for `{excerpt(named.name)}` covers {longest:,} positions; "
                f"this server analyses sequences of at most {max_length:,} (max_sequence_length)"
            )
    out: dict[str, np.ndarray] = {}
    for named in message.layers:
        if named.name in out:
            raise InvalidInputError(f"layer `{excerpt(named.name)}` is sent twice")
        dt = wire.numpy_dtype(named.tensor.dtype)
        if dt.kind != "f":
            raise InvalidInputError(
                f"attention for `{excerpt(named.name)}` is {dt.name}; send probabilities as "
                "float32, float16 or float64"
            )
        shape = tuple(named.tensor.shape)
        if len(shape) != 4:
            raise InvalidInputError(
                f"attention for `{excerpt(named.name)}` must have shape (batch, heads, query, "
                f"key); got {shape[:8]}"
            )
        want = wire.expected_nbytes(named.tensor)
        content = named.tensor.content  # each read of a bytes field is a copy: read it once
        if len(content) != want:
            raise InvalidInputError(
                f"tensor of shape {list(shape)} and dtype {dt.name} needs {want} bytes of "
                f"content; got {len(content)}"
            )
        if 0 in shape:
            raise InvalidInputError(
                f"attention for `{excerpt(named.name)}` has an empty axis: shape {shape}"
            )
        array = np.frombuffer(content, dtype=dt).reshape(shape)
        _check_rows(named.name, array, should_stop)
        out[named.name] = array
    if not out:
        raise InvalidInputError("no attention tensors were sent")
    return out


def _check_rows(name: str, array: np.ndarray, should_stop: StopCheck = None) -> None:
    """Rows of probabilities sum to 1 (0 for a query with every key masked); summed in float64
    a block of rows at a time, so the check costs a block's sums, not a float64 copy, and a
    cancelled call stops between blocks."""
    keys = array.shape[-1]
    rows = array.reshape(-1, keys)
    block = max(1, _CHECK_BLOCK_ELEMENTS // keys)
    tolerance = row_tolerance(array.dtype)
    for start in range(0, rows.shape[0], block):
        check_stop(should_stop)
        sums = rows[start : start + block].sum(axis=-1, dtype=np.float64)
        if not np.all((np.abs(sums - 1.0) <= tolerance) | (sums == 0.0)):
            raise InvalidInputError(
                f"attention for `{excerpt(name)}` is not softmax probabilities: its rows must "
                "sum to 1 (or be all 0 where every key is masked)"
            )


def analyze_response(
    summary: dict[str, Any],
    *,
    model_id: str = "",
    first_head: int = 0,
    reductions: Mapping[str, pb.Reduction | None] | None = None,
) -> pb.AnalyzeResponse:
    """Turn `analysis.summarize_layers` output into the response message (the rollout is
    taken out of `summary`, so that it can be freed early).

    `first_head`: the model's index of the first head analysed (when one head was chosen);
    `reductions`: how each of ``summary["pooled"]``'s layers was cut and pooled.
    """
    layers = []
    for name, metrics in summary["layers"].items():
        heads = [
            pb.HeadMetrics(
                head=first_head + h,
                **{m.wire: analysis.head_value(metrics, m, h) for m in analysis.METRICS},
            )
            for h in range(metrics["num_heads"])
        ]
        layers.append(
            pb.LayerAnalysis(
                layer_name=name,
                shape=metrics["shape"],
                num_heads=metrics["num_heads"],
                heads=heads,
                **{m.average: metrics[m.average] for m in analysis.averaged() if m.average},
            )
        )
    response = pb.AnalyzeResponse(model_id=model_id, layers=layers)
    for name, attention in summary.pop("pooled", {}).items():
        entry = response.pooled.add(layer_name=name)
        entry.attention.CopyFrom(wire.to_proto(np.asarray(attention, dtype=np.float32)))
        reduction = (reductions or {}).get(name)
        if reduction is not None:
            entry.reduction.CopyFrom(reduction)
    rollout = summary.pop("rollout", None)
    pooled = summary.pop("rollout_pooling", None)
    if rollout is not None and pooled is not None:
        response.rollout_pooling.source_length = pooled["size"]
        response.rollout_pooling.block = pooled["block"]
    if rollout is not None:
        # Each copy lets the one before it go (float64 -> float32 -> bytes -> the message),
        # so at most two sizes of the matrix exist at once, not a list of floats.
        matrix = np.asarray(rollout, dtype="<f4")
        del rollout  # the float64 matrix: `summary` held the last other reference
        response.rollout.dtype = pb.FLOAT32
        response.rollout.shape.extend(int(n) for n in matrix.shape)
        content = matrix.tobytes()
        del matrix
        response.rollout.content = content
    return response


def weights_file(model_id: str, content: bytes) -> pb.WeightsFile:
    return pb.WeightsFile(model_id=model_id, content=content)


# -- head analyses: plain results (server/analyses.py) in, messages out ----------------------------
def provenance(
    entry: CompiledModel | None, sanity: dict[str, Any], *, masked: list[str], items: int
) -> pb.Provenance:
    """Where the attention came from (`entry`, or None when it was sent), what was masked,
    and `sanity` (`head_analysis.Sanity.result()`) of the attention the metrics read."""
    message = pb.Provenance(
        source="model" if entry is not None else "sent",
        dtype=sanity["dtype"],
        masked=masked,
        rows_sum_to_one=sanity["rows_sum_to_one"],
        max_row_error=sanity["max_row_error"],
        row_tolerance=sanity["tolerance"],
        finite=sanity["finite"],
        rows=sanity["rows"],
        fully_masked_rows=sanity["fully_masked_rows"],
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


def heads_analysis(
    layers: dict[str, Any], *, model_id: str, first_head: int, provenance: pb.Provenance
) -> pb.HeadsAnalysis:
    """AnalyzeHeads' answer: per-layer metrics (`masked_layer_metrics`) as in Analyze."""
    response = analyze_response({"layers": layers}, model_id=model_id, first_head=first_head)
    return pb.HeadsAnalysis(
        model_id=response.model_id, layers=response.layers, provenance=provenance
    )


def similarity_response(
    result: dict[str, Any],
    *,
    model_id: str,
    first_head: int,
    threshold: float,
    provenance: pb.Provenance,
) -> pb.SimilarityResponse:
    """HeadSimilarity's answer from `head_analysis.similarity`'s result."""
    return pb.SimilarityResponse(
        model_id=model_id,
        heads=[pb.HeadRef(layer=h["layer"], head=first_head + h["head"]) for h in result["heads"]],
        distance=wire.to_proto(np.asarray(result["distance"], dtype=np.float64)),
        pairs=[
            pb.HeadPair(a=p["a"], b=p["b"], distance=p["distance"], same_layer=p["same_layer"])
            for p in result["pairs"]
        ],
        groups=[pb.HeadGroup(heads=g) for g in result["groups"]],
        threshold=threshold,
        provenance=provenance,
    )


def ablation_progress(done: int, total: int) -> pb.AblationUpdate:
    return pb.AblationUpdate(progress=pb.Progress(stage="ablating", done=done, total=total))


def ablation_result(
    impacts: list[dict[str, Any]],
    *,
    model_id: str,
    softmax_output: bool,
    ranked_by: str,
    provenance: pb.Provenance,
) -> pb.AblationUpdate:
    """AblateHeads' last update; `impacts` (layer, head, pattern, l2, relative_l2, kl) are
    ranked in the order given."""
    return pb.AblationUpdate(
        result=pb.AblationResult(
            model_id=model_id,
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
            softmax_output=softmax_output,
            ranked_by=ranked_by,
            provenance=provenance,
        )
    )


def profile_extract(first: pb.ProfileRequest) -> pb.ExtractRequest:
    """The extract request naming the model a profile stream's first message names."""
    extract = pb.ExtractRequest()
    which = first.WhichOneof("model")
    if which == "model_id":
        extract.model_id = first.model_id
    elif which == "compile":
        extract.compile.CopyFrom(first.compile)
    return extract


def profile_progress(done: int, total: int) -> pb.ProfileUpdate:
    return pb.ProfileUpdate(progress=pb.Progress(stage="profiling", done=done, total=total))


def profile_result(
    result: dict[str, Any], *, model_id: str, samples: int, provenance: pb.Provenance
) -> pb.ProfileUpdate:
    """ProfileHeads' last update from `head_analysis.Profile.result()`."""
    heads = [
        pb.HeadProfile(
            head=pb.HeadRef(layer=layer, head=row["head"]),
            samples=row["samples"],
            metrics=[
                pb.MetricDistribution(
                    metric=name,
                    mean=stat["mean"],
                    std=stat["std"],
                    quantiles=[stat["quantiles"][str(q)] for q in QUANTILES],
                )
                for name, stat in row["metrics"].items()
            ],
            labels=[pb.LabelShare(label=k, share=v) for k, v in row["labels"].items()],
        )
        for layer, rows in result["layers"].items()
        for row in rows
    ]
    return pb.ProfileUpdate(
        result=pb.ProfileResult(
            model_id=model_id,
            heads=heads,
            quantile_levels=list(QUANTILES),
            exact_quantiles=result["exact_quantiles"],
            samples=samples,
            provenance=provenance,
        )
    )


def compare_response(
    rows: list[dict[str, Any]],
    *,
    model_id_a: str,
    model_id_b: str,
    unmatched_layers: list[str],
    provenance_a: pb.Provenance,
    provenance_b: pb.Provenance,
) -> pb.CompareResponse:
    """CompareCheckpoints' answer; `rows` (`head_analysis.compare_layer`) ranked as given."""
    return pb.CompareResponse(
        model_id_a=model_id_a,
        model_id_b=model_id_b,
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
                    for m in r["delta"]
                ],
            )
            for rank, r in enumerate(rows, start=1)
        ],
        unmatched_layers=unmatched_layers,
        provenance_a=provenance_a,
        provenance_b=provenance_b,
    )
