"""ExtractAttention's stream, read as layers: the request, the layer header and the chunks.

A mixin of `AttentionClient` (which has the channel and the remembered sources).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from neural_attn import chunk_codec, wire
from neural_attn.client import _connection as _conn
from neural_attn.client._messages import ExtractedLayer, ExtractOptions, pooling_of
from neural_attn.client._results import CompileResult
from neural_attn.client._sinks import LayerHeader, LayerSink
from neural_attn.errors import InvalidInputError, ModelNotFoundError
from neural_attn.v1 import attention_pb2 as pb

_T = TypeVar("_T")


def _layer_header(chunk: pb.AttentionChunk) -> LayerHeader:
    pooling = pooling_of(chunk.reduction) if chunk.HasField("reduction") else None
    return LayerHeader(
        name=chunk.layer_name,
        index=chunk.layer_index,
        shape=tuple(int(n) for n in chunk.shape),
        dtype=wire.numpy_dtype(chunk.dtype),
        head=None if chunk.head < 0 else chunk.head,
        pooling=pooling,
    )


class ExtractionMixin:
    """ExtractAttention requests and their streams; mixed into `AttentionClient`."""

    _sources: Any
    _extract_raw: Any

    if TYPE_CHECKING:  # AttentionClient's, which makes every call

        def _call(self, method: str) -> dict[str, Any]: ...

    def _extract_request(
        self,
        model: str | CompileResult,
        data: np.ndarray | None,
        options: ExtractOptions,
        *,
        inline: bool,
    ) -> pb.ExtractRequest:
        model_id = model.model_id if isinstance(model, CompileResult) else model
        request = pb.ExtractRequest(
            layer_names=list(options.layers or ()),
            output_dtype=pb.FLOAT16 if options.dtype == "float16" else pb.FLOAT32,
            max_chunk_bytes=options.max_chunk_bytes,
            sequence_length=options.sequence_length,
        )
        if inline:
            request.compile.CopyFrom(self._sources[model_id])
        else:
            request.model_id = model_id
        if options.head is not None:
            request.head = options.head
        if data is not None:
            request.input.CopyFrom(wire.to_proto(np.asarray(data)))
        if options.window is not None:
            (q0, q1), (k0, k1) = options.window
            request.window.CopyFrom(
                pb.Window(query_start=q0, query_stop=q1, key_start=k0, key_stop=k1)
            )
        if options.pool_size:
            request.pooling.CopyFrom(
                pb.Pooling(
                    target_size=options.pool_size,
                    mode=pb.MEAN if options.pool_mode == "mean" else pb.MAX,
                )
            )
        return request

    def _with_resend(
        self, model: str | CompileResult, call: Callable[[bool], Iterator[_T]]
    ) -> Iterator[_T]:
        """`call(inline=False)`; on NOT_FOUND, once more with the remembered source inline."""
        model_id = model.model_id if isinstance(model, CompileResult) else model
        try:
            yield from call(False)
        except ModelNotFoundError:
            if model_id not in self._sources:
                raise
            yield from call(True)

    def _stream(
        self, request: pb.ExtractRequest, sink: LayerSink, *, skip: frozenset[str] = frozenset()
    ) -> Iterator[ExtractedLayer]:
        """The layers of one ExtractAttention stream, through `sink`; layers in `skip` are
        read and dropped (a stream asked again after a replica died)."""
        header: LayerHeader | None = None
        filled = 0
        with _conn.rpc_errors():
            for raw in self._extract_raw(request, **self._call("ExtractAttention")):
                chunk, start, stop = chunk_codec.decode(raw)  # content stays in `raw`
                if chunk.layer_name in skip:
                    continue
                if header is None or chunk.layer_name != header.name:
                    if header is not None:
                        raise InvalidInputError(f"stream ended layer `{header.name}` early")
                    header = _layer_header(chunk)
                    sink.begin(header)
                    filled = 0
                count, odd = divmod(stop - start, header.dtype.itemsize)
                if odd or count != chunk.element_count or chunk.offset + count > header.size:
                    raise InvalidInputError(
                        f"malformed chunk {chunk.chunk_index} of `{header.name}`"
                    )
                part = np.frombuffer(raw, dtype=header.dtype, count=count, offset=start)
                sink.write(chunk.offset, part)
                filled += part.size
                if chunk.chunk_index == chunk.num_chunks - 1:
                    if filled != header.size:
                        raise InvalidInputError(f"layer `{header.name}` arrived incomplete")
                    done, header = header, None
                    yield ExtractedLayer.of(done, sink.end())
        if header is not None:
            raise InvalidInputError(f"the stream ended before layer `{header.name}` was complete")
