"""`AttentionClient`: the SDK over the gRPC contract (protos/neural_attn/v1/attention.proto)."""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from neural_attn import wire
from neural_attn.client import _connection as _conn
from neural_attn.client._analyses import HeadAnalysisMixin, attention_set
from neural_attn.client._embedded import server_target
from neural_attn.client._extraction import ExtractedLayer as ExtractedLayer
from neural_attn.client._extraction import ExtractionMixin
from neural_attn.client._extraction import _layer_header as _layer_header
from neural_attn.client._messages import ExtractOptions, analysis_dict
from neural_attn.client._results import CompileResult as CompileResult
from neural_attn.client._results import InputSpec as InputSpec
from neural_attn.client._results import LayerInfo as LayerInfo
from neural_attn.client._results import _compile_result
from neural_attn.client._sinks import ArraySink, LayerSink
from neural_attn.errors import (
    InvalidInputError,
    ResourceLimitError,
    ServerUnavailableError,
)
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

_REMEMBERED_SOURCES = 16
_STREAM_ATTEMPTS = 3  # an ExtractAttention stream cut by a dying replica is asked again
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # inline weights files can be large


class AttentionClient(ExtractionMixin, HeadAnalysisMixin):
    """Talks to a neural-attn server. A context manager; pass `channel` to reuse one.

    Args:
        target: "host:port", a gRPC target such as "dns:///name:port", or a comma list of
            replicas "host:port,host:port" balanced round-robin (default: $NEURAL_ATTN_SERVER,
            else the embedded server in this process, see `_embedded.server_target`).
        token: bearer token of a server that requires one (default: $NEURAL_ATTN_TOKEN, or the
            file named by $NEURAL_ATTN_TOKEN_FILE).
        timeout: seconds per call (default: a deadline per call kind, `DEFAULT_DEADLINES`).
        credentials: `grpc.ChannelCredentials` to use as they are (wins over the tls options).
        tls: TLS with the system's CA roots ($NEURAL_ATTN_TLS=1).
        tls_ca: PEM file (or bytes) of the CA that signed the server ($NEURAL_ATTN_TLS_CA).
        tls_cert, tls_key: this client's certificate and key for mutual TLS
            ($NEURAL_ATTN_CLIENT_CERT, $NEURAL_ATTN_CLIENT_KEY; not the server's
            NEURAL_ATTN_TLS_CERT/KEY).
        connect_timeout: how long a call waits for an unreachable server to come (back) up
            before failing UNAVAILABLE (never longer than its own deadline; default 20 s or
            $NEURAL_ATTN_CONNECT_TIMEOUT).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        tls: bool | None = None,
        tls_ca: str | os.PathLike[str] | bytes | None = None,
        tls_cert: str | os.PathLike[str] | bytes | None = None,
        tls_key: str | os.PathLike[str] | bytes | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        embedded = False
        if target is None and channel is None:
            target, embedded = server_target()
        self.target = target or os.environ.get("NEURAL_ATTN_SERVER") or "the given channel"
        self._own_channel = channel is None
        self._max_message_bytes = max_message_bytes
        if channel is None:
            creds = (
                None  # the embedded server listens on loopback in this process, in clear
                if embedded
                else _conn.channel_credentials(
                    credentials=credentials,
                    tls=tls,
                    tls_ca=tls_ca,
                    tls_cert=tls_cert,
                    tls_key=tls_key,
                )
            )
            channel = _conn.open_channel(self.target, creds, max_message_bytes)
        self._channel = channel
        self._ready = _conn.Readiness(self._channel, self.target)
        self._connect_timeout = (
            connect_timeout
            if connect_timeout is not None
            else float(os.environ.get("NEURAL_ATTN_CONNECT_TIMEOUT", _conn.DEFAULT_CONNECT_TIMEOUT))
        )
        self._stub = pb_grpc.AttentionServiceStub(self._channel)
        # ExtractAttention's chunks as received: chunk_codec reads their content in place.
        self._extract_raw = self._channel.unary_stream(
            "/neural_attn.v1.AttentionService/ExtractAttention",
            request_serializer=pb.ExtractRequest.SerializeToString,
        )
        token = _conn.bearer_token(token)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._timeout: float = _conn.DEFAULT_DEADLINE if timeout is None else timeout
        self._timeouts: dict[str, float] = (
            dict(_conn.DEFAULT_DEADLINES)
            if timeout is None
            else dict.fromkeys(_conn.DEFAULT_DEADLINES, self._timeout)
        )
        # The last few compile requests, to resend when a replica lacks the model (bounded:
        # requests may carry large weights files).
        self._sources: OrderedDict[str, pb.CompileRequest] = OrderedDict()

    def _call(self, method: str) -> dict[str, Any]:
        """Keyword arguments of a stub call: its deadline, metadata and wait-for-ready.

        Waits (up to `connect_timeout`, within the deadline) for a server to be reachable.
        """
        timeout = self._timeouts.get(method, self._timeout)
        self._ready.wait(min(self._connect_timeout, timeout))
        metadata = (*self._metadata, ("x-request-id", uuid.uuid4().hex))
        return {"timeout": timeout, "metadata": metadata, "wait_for_ready": True}

    def _unary(self, method: str, request: Any) -> Any:
        """One unary call of `method` as `_call` says; failures as our exceptions."""
        with _conn.rpc_errors():
            return getattr(self._stub, method)(request, **self._call(method))

    def _streamed(self, method: str, request: Any) -> Iterator[Any]:
        """The replies of a server-streaming call of `method`; failures as our exceptions."""
        with _conn.rpc_errors():
            yield from getattr(self._stub, method)(request, **self._call(method))

    def __enter__(self) -> AttentionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ready.close()
        if self._own_channel:
            self._channel.close()

    # -- Compile -------------------------------------------------------------------------------
    def _compile_request(
        self,
        source: str,
        *,
        filename: str,
        backend: str,
        seed: int,
        network: str | None,
        weights: str | os.PathLike[str] | bytes | None,
        weights_format: str | None,
        server_weights: str | None,
    ) -> pb.CompileRequest:
        if backend not in wire.BACKEND_CODES:
            raise InvalidInputError(
                f"unknown backend {backend!r}; choose one of {', '.join(wire.BACKEND_CODES)}"
            )
        request = pb.CompileRequest(
            source=source,
            filename=filename,
            backend=wire.BACKEND_CODES[backend],
            seed=seed,
            network=network or "",
        )
        if weights is not None and server_weights is not None:
            raise InvalidInputError("give weights or server_weights, not both")
        if weights_format is not None and weights_format not in wire.WEIGHTS_FORMAT_CODES:
            raise InvalidInputError(
                f"weights_format must be one of {', '.join(wire.WEIGHTS_FORMAT_CODES)}; "
                f"got {weights_format!r}"
            )
        fmt = wire.WEIGHTS_FORMAT_CODES.get(weights_format or "", pb.WEIGHTS_FORMAT_UNSPECIFIED)
        if isinstance(weights, bytes):
            request.weights.CopyFrom(pb.Weights(content=weights, format=fmt))
        elif weights is not None:
            path = Path(weights)
            self._check_inline(path)
            request.weights.CopyFrom(
                pb.Weights(content=path.read_bytes(), filename=path.name, format=fmt)
            )
        elif server_weights is not None:
            request.weights.CopyFrom(pb.Weights(path=server_weights, format=fmt))
        return request

    def _check_inline(self, path: Path) -> None:
        """Refuse, before reading it, a weights file no request can carry."""
        size = path.stat().st_size
        if size > self._max_message_bytes - 2**20:  # room for the source and the rest
            raise ResourceLimitError(
                f"the weights file {path.name} is {size / 2**20:,.0f} MiB; a request carries "
                f"at most {self._max_message_bytes / 2**20:,.0f} MiB. Put it under the "
                "server's --weights-dir and name it with --server-weights (server_weights=)"
            )

    def compile(
        self,
        source: str,
        *,
        filename: str = "<string>",
        backend: str = "tensorflow",
        seed: int = 0,
        network: str | None = None,
        weights: str | os.PathLike[str] | bytes | None = None,
        weights_format: str | None = None,
        server_weights: str | None = None,
    ) -> CompileResult:
        """Compile DSL source on the server; the result's model_id names it in later calls.

        Args:
            weights: trained weights to load: a local file (sent to the server) or its bytes.
                Neutral `.npz`, Keras `.weights.h5`/`.keras`, or a PyTorch `state_dict` file;
                any of them loads into either backend.
            weights_format: "npz", "safetensors", "keras_h5", "keras_archive" or "torch"
                (default: guessed).
            server_weights: a file under the server's weights directory, instead of `weights`.
        """
        request = self._compile_request(
            source,
            filename=filename,
            backend=backend,
            seed=seed,
            network=network,
            weights=weights,
            weights_format=weights_format,
            server_weights=server_weights,
        )
        response = self._unary("Compile", request)
        # Remember the source: a replica that lacks the model answers NOT_FOUND and we resend it.
        self._sources[response.model_id] = request
        self._sources.move_to_end(response.model_id)
        while len(self._sources) > _REMEMBERED_SOURCES:
            self._sources.popitem(last=False)
        return _compile_result(response)

    def compile_file(self, path: str | os.PathLike[str], **options: Any) -> CompileResult:
        path = Path(path)
        return self.compile(path.read_text(encoding="utf-8"), filename=str(path), **options)

    def export_weights(
        self,
        source: str,
        *,
        filename: str = "<string>",
        export_format: str = "npz",
        **options: Any,
    ) -> bytes:
        """The compiled model's weights as a framework-neutral file (bytes): `.npz`, or
        `.safetensors` with `export_format="safetensors"`; both keyed "layer/param".

        `options` are those of `compile`. With `weights` in one framework's format this
        converts them: the result loads into either backend.
        """
        if export_format not in wire.EXPORT_FORMATS:
            raise InvalidInputError(
                f"export_format must be one of {', '.join(wire.EXPORT_FORMATS)}; "
                f"got {export_format!r}"
            )
        defaults = {
            "backend": "tensorflow",
            "seed": 0,
            "network": None,
            "weights": None,
            "weights_format": None,
            "server_weights": None,
        }
        request = pb.ExportWeightsRequest(
            model=self._compile_request(source, filename=filename, **{**defaults, **options}),
            format=wire.WEIGHTS_FORMAT_CODES[export_format],
        )
        return bytes(self._unary("ExportWeights", request).content)

    def server_info(self) -> dict[str, Any]:
        """Version, backends installed (with version and device) and limits of the server."""
        info = self._unary("GetServerInfo", pb.ServerInfoRequest())
        return {
            "version": info.version,
            "default_backend": info.default_backend,
            "backends": {
                b.name: {
                    "available": b.available,
                    "version": b.version,
                    "device": b.device,
                    "detail": b.detail,
                }
                for b in info.backends
            },
            "max_message_bytes": info.max_message_bytes,
            "max_sequence_length": info.max_sequence_length,
            "weights_directory": info.weights_directory,
        }

    # -- ExtractAttention ----------------------------------------------------------------------
    def extract_layers(
        self,
        model: str | CompileResult,
        data: np.ndarray | None = None,
        *,
        layers: Sequence[str] | None = None,
        head: int | None = None,
        dtype: str = "float32",
        max_chunk_bytes: int = 0,
        sequence_length: int = 0,
        window: tuple[tuple[int, int], tuple[int, int]] | None = None,
        pool_size: int = 0,
        pool_mode: str = "max",
        sink: LayerSink | None = None,
    ) -> Iterator[ExtractedLayer]:
        """Yield each attention layer as it completes, with what was sent and how.

        One forward pass on the server serves every layer, and each is streamed as the pass
        computes it. `window=((q0, q1), (k0, k1))` keeps exact values of a query range x key
        range (a stop of 0: the end); `pool_size=N` has the server pool both axes to at most N
        positions (`pool_mode` "max" or "mean"); both are done beside the model, so only the
        reduced bytes travel. Chunks go to `sink` as they arrive (default: one preallocated
        array per layer); the layer's `value` is what the sink's `end()` returned.
        """
        if dtype not in ("float32", "float16"):
            raise InvalidInputError("dtype must be 'float32' or 'float16'")
        if pool_mode not in ("max", "mean"):
            raise InvalidInputError("pool_mode must be 'max' or 'mean'")
        options = ExtractOptions(
            layers, head, dtype, max_chunk_bytes, sequence_length, window, pool_size, pool_mode
        )
        target = sink if sink is not None else ArraySink()

        handed_out: set[str] = set()

        def call(inline: bool) -> Iterator[ExtractedLayer]:
            request = self._extract_request(model, data, options, inline=inline)
            return self._stream(request, target, skip=frozenset(handed_out))

        # gRPC retries a stream only until its first chunk arrives; a replica that dies after
        # that would lose the call. With the SDK's own sink (which may begin a layer again) it
        # is asked again, and only the layers not handed out yet are handed out: the answer is
        # deterministic, so they are what the first replica would have sent.
        attempts = _STREAM_ATTEMPTS if sink is None else 1
        for attempt in range(1, attempts + 1):
            try:
                for layer in self._with_resend(model, call):
                    handed_out.add(layer.name)
                    yield layer
                return
            except ServerUnavailableError:
                if attempt == attempts:
                    raise

    def extract_attention(
        self,
        model: str | CompileResult,
        data: np.ndarray | None = None,
        **options: Any,
    ) -> Iterator[tuple[str, Any]]:
        """Yield (layer_name, attention) per layer, each (batch, heads, query, key).

        The options are those of `extract_layers`; with a `sink`, the second item is what the
        sink returned for the layer. `data=None` asks for the server's deterministic sample
        input (of `sequence_length` when the model's length is dynamic).
        """
        for layer in self.extract_layers(model, data, **options):
            yield layer.name, layer.value

    # -- Analyze -------------------------------------------------------------------------------
    def analyze(
        self,
        attention: Mapping[str, np.ndarray] | None = None,
        *,
        model: str | CompileResult | None = None,
        data: np.ndarray | None = None,
        layers: Sequence[str] | None = None,
        head: int | None = None,
        sequence_length: int = 0,
        pool_size: int = 0,
        pool_mode: str = "max",
    ) -> dict[str, Any]:
        """Metrics per layer and head: for `attention` you send, or for a `model` the server runs.

        Returns {"model_id", "layers": {name: metrics}, "rollout"} with the documented
        metric names (the same dict `neural_attn.analysis.summarize_layers` makes locally),
        and "rollout_pooling" when the rollout is of pooled layers. With `pool_size` (a
        model's pass), "pooled" is {name: `ExtractedLayer`} of the layers that pooling to
        `pool_size` positions shrinks, from the same pass as the metrics, when the server
        could send them with the answer (the others: `extract_layers(..., pool_size=)`).
        """
        if (attention is None) == (model is None):
            raise InvalidInputError("analyze needs either attention tensors or a model, not both")
        if attention is not None:
            return self._analyze(pb.AnalyzeRequest(attention=attention_set(attention)))
        assert model is not None
        options = ExtractOptions(
            layers, head, sequence_length=sequence_length, pool_size=pool_size, pool_mode=pool_mode
        )

        def call(inline: bool) -> Iterator[dict[str, Any]]:
            request = self._extract_request(model, data, options, inline=inline)
            yield self._analyze(pb.AnalyzeRequest(extract=request))

        return next(iter(self._with_resend(model, call)))

    def _analyze(self, request: pb.AnalyzeRequest) -> dict[str, Any]:
        return analysis_dict(self._unary("Analyze", request))
