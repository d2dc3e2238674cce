"""The model part of a request, resolved into the engine's values: a compile request into a
compiled model, an extract request into its model and a checked plan. The servicer and the
head analyses both go through here; refusals are our errors, raised before any work."""

from __future__ import annotations

from neural_attn.backends.weight_files import guess_format
from neural_attn.errors import InvalidInputError, ModelNotFoundError, excerpt
from neural_attn.server import convert
from neural_attn.server.engine import CompiledModel, Engine, ExtractPlan, WeightsInput
from neural_attn.v1 import attention_pb2 as pb


class Resolver:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config

    def compile(self, request: pb.CompileRequest) -> tuple[CompiledModel, bool]:
        return self.engine.compile(
            request.source,
            filename=request.filename,
            backend=convert.backend_name(request.backend, self.config.default_backend),
            seed=request.seed,
            network=request.network or None,
            weights=self._weights(request),
        )

    def _weights(self, request: pb.CompileRequest) -> WeightsInput | None:
        if not request.HasField("weights"):
            return None
        weights = request.weights
        which = weights.WhichOneof("source")
        if which == "content":
            content, name = weights.content, weights.filename
        elif which == "path":
            content, name = self.engine.weights_file(weights.path), weights.path
        else:
            raise InvalidInputError("weights need either content or a path")
        fmt = convert.weights_format(weights.format) or guess_format(name, content)
        return WeightsInput(content, fmt, name)

    def model(self, request: pb.ExtractRequest) -> CompiledModel:
        which = request.WhichOneof("model")
        if which == "model_id":
            entry = self.engine.lookup(request.model_id)
            if entry is None:
                raise ModelNotFoundError(
                    f"model {excerpt(request.model_id)!r} is not held by this server; send the "
                    "source "
                    "again (an inline compile request) and any replica will serve it"
                )
            return entry
        if which == "compile":
            return self.compile(request.compile)[0]
        raise InvalidInputError("an extract request needs a model_id or an inline compile request")

    def plan(
        self, request: pb.ExtractRequest, entry: CompiledModel, *, tiled: bool = False
    ) -> ExtractPlan:
        data = None
        if request.HasField("input"):
            data = convert.input_array(request.input, max_elements=self.config.max_input_elements)
        pool_size, pool_mode = convert.pooling(request)
        return self.engine.plan(
            entry,
            data=data,
            layer_names=list(request.layer_names),
            head=request.head if request.HasField("head") else None,
            sequence_length=request.sequence_length,
            window=convert.window(request),
            pool_size=pool_size,
            pool_mode=pool_mode,
            tiled=tiled,
        )
