"""What the server says about a compiled model, as frozen dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neural_attn import wire
from neural_attn.v1 import attention_pb2 as pb


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    is_attention: bool
    num_heads: int
    line: int


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int | None, ...]  # batch first; None is dynamic
    dtype: str
    description: str


@dataclass(frozen=True)
class CompileResult:
    """What the server says about a compiled model."""

    model_id: str
    backend: str
    network_name: str
    generated_code: str
    layers: tuple[LayerInfo, ...]
    attention_layers: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    warnings: tuple[str, ...]
    device: str
    parameter_count: int
    attention_path: str
    cached: bool
    weights_sha256: str = ""  # of the trained weights loaded; "" for random initialisation
    # The first layer when it is an Embedding (token ids in [0, vocab_size)); "" and 0 otherwise.
    embedding_layer: str = ""
    vocab_size: int = 0


def _shape(dims: Sequence[int]) -> tuple[int | None, ...]:
    return tuple(None if d < 0 else int(d) for d in dims)


def _compile_result(r: pb.CompileResponse) -> CompileResult:
    return CompileResult(
        model_id=r.model_id,
        backend=wire.BACKEND_NAMES.get(r.backend, "unknown"),
        network_name=r.network_name,
        generated_code=r.generated_code,
        layers=tuple(
            LayerInfo(
                info.name,
                info.type,
                _shape(info.input_shape),
                _shape(info.output_shape),
                info.is_attention,
                info.num_heads,
                info.line,
            )
            for info in r.layers
        ),
        attention_layers=tuple(r.attention_layers),
        inputs=tuple(
            InputSpec(_shape(s.shape), wire.numpy_dtype(s.dtype).name, s.description)
            for s in r.inputs
        ),
        warnings=tuple(r.warnings),
        device=r.device,
        parameter_count=r.parameter_count,
        attention_path=r.attention_path,
        cached=r.cached,
        weights_sha256=r.weights_sha256,
        embedding_layer=r.embedding_layer,
        vocab_size=r.vocab_size,
    )
