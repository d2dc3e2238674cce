"""Refuse before work, by bytes, with small typed errors (issue 8, items 2 and 3).

Each test pins a finding: a long fixed input refused from its shape (the server's memory does
not move), the model cache bounded in bytes, Analyze of sent tensors in bounded memory, short
messages whatever the input, corrupt weights files of every format INVALID_ARGUMENT naming the
format, and max_layers one number.
"""

from __future__ import annotations

import gc
import io
import re
import tracemalloc
import weakref
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from neural_attn.analysis import summarize_layers
from neural_attn.backends.base import get_backend
from neural_attn.backends.weights import initial_weights
from neural_attn.dsl import compile_source
from neural_attn.dsl.resolve import MAX_LAYERS
from neural_attn.errors import (
    ERROR_KIND_KEY,
    MAX_MESSAGE_BYTES,
    DSLLimitError,
    InvalidInputError,
    NeuralAttnError,
    ResourceLimitError,
)
from neural_attn.server.cache import ModelCache
from neural_attn.server.config import ServerConfig
from neural_attn.server.engine import Engine
from neural_attn.server.servicer import AttentionServicer
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

SMALL = """
network Small {
  input: (6, 8)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=8)
}
"""
LONG = """
network Long {
  input: (10000000, 16)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=16)
}
"""


def _stub(target: str) -> pb_grpc.AttentionServiceStub:
    return pb_grpc.AttentionServiceStub(grpc.insecure_channel(target))


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _kind(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(ERROR_KIND_KEY)


def _status_bytes(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) * 1024


def _reset_peak_rss() -> None:
    """Set this process's peak RSS (VmHWM) back to its current RSS (Linux clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    if _status_bytes("VmHWM") > _status_bytes("VmRSS") + 16 * 2**20:
        pytest.skip("this kernel does not reset the peak RSS")


class _Active:
    """A servicer context that stays active (for calling the servicer without gRPC)."""

    def is_active(self) -> bool:
        return True


# ------------------------------------------------------------------ refuse before allocating


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_long_fixed_input_is_refused_from_its_shape_and_memory_does_not_move(server_target):
    stub = _stub(server_target)
    inline = pb.ExtractRequest(compile=pb.CompileRequest(source=LONG, backend=pb.PYTORCH))
    warm = pb.ExtractRequest(compile=pb.CompileRequest(source=SMALL, backend=pb.PYTORCH))
    list(stub.ExtractAttention(warm, timeout=120))  # the framework is loaded before measuring
    _rpc_error(lambda: list(stub.ExtractAttention(inline, timeout=120)))
    _reset_peak_rss()
    before = _status_bytes("VmRSS")
    for _ in range(3):
        error = _rpc_error(lambda: list(stub.ExtractAttention(inline, timeout=120)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "160,000,000 values per item" in error.details()
        analyze = pb.AnalyzeRequest(extract=inline)
        error = _rpc_error(lambda: stub.Analyze(analyze, timeout=120))  # noqa: B023
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The peak, not the RSS after: the float64 sample (1.28 GB) was freed again once refused,
    # the peak went from 253 MiB to 2,084 MiB.
    assert _status_bytes("VmHWM") - before < 64 * 2**20
    assert _status_bytes("VmRSS") - before < 64 * 2**20


def test_a_sample_over_the_limits_is_refused_before_it_is_made(monkeypatch):
    engine = Engine(ServerConfig(max_sequence_length=512))
    source = SMALL.replace("(6, 8)", "(4096, 8)")  # compiles: one layer of 2 x 4096^2 fits
    entry, _ = engine.compile(source, filename="", backend="pytorch", seed=0, network=None)

    def never(*args, **kwargs):
        raise AssertionError("the sample input was made before the limits were checked")

    monkeypatch.setattr("neural_attn.server.engine.sample_input", never)
    with pytest.raises(ResourceLimitError, match="sequence length 4,096 is over"):
        engine.plan(entry, data=None, layer_names=[], head=None)


# ------------------------------------------------------------------ the cache, in bytes


def test_the_cache_evicts_least_recently_used_by_bytes():
    cache: ModelCache[bytes] = ModelCache(10, max_bytes=100, size_of=len)
    cache.get_or_build("a", lambda: b"a" * 40)
    cache.get_or_build("b", lambda: b"b" * 40)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.get_or_build("c", lambda: b"c" * 40)
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.nbytes == 80 and len(cache) == 2
    cache.make_room(100)  # before building a model of 100 bytes, everything else goes
    assert len(cache) == 0 and cache.nbytes == 0
    cache.get_or_build("big", lambda: b"x" * 500)  # larger than the bound alone: still served
    assert cache.get("big") is not None and cache.nbytes == 500


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_the_engine_cache_is_bounded_by_parameter_bytes(backend):
    dense = "network D{units} {{\n  input: (100,)\n  layers:\n    Dense({units})\n}}\n"
    sizes = {units: 4 * (100 * units + units) for units in (1000, 1001, 1002)}  # ~400 KB each
    engine = Engine(ServerConfig(max_cache_bytes=900_000, max_cached_models=16))
    ids, models = [], []
    gc.disable()  # Python's own collections must not be what frees an evicted model
    try:
        for units in sizes:
            entry, cached = engine.compile(
                dense.format(units=units), filename="", backend=backend, seed=0, network=None
            )
            assert not cached and entry.nbytes == sizes[units]
            ids.append(entry.model_id)
            models.append(weakref.ref(entry.model.model))  # the framework model
            del entry
        # the evicted model's memory is really let go (a Keras model lives in cycles)
        assert models[0]() is None and models[2]() is not None
    finally:
        gc.enable()
    assert engine.lookup(ids[0]) is None  # the oldest made room for the third
    assert engine.lookup(ids[1]) is not None and engine.lookup(ids[2]) is not None
    assert engine.cache.nbytes == sizes[1001] + sizes[1002] <= 900_000


# ------------------------------------------------------------------ Analyze in bounded memory


def _uniform(n: int) -> np.ndarray:
    return np.full((1, 1, n, n), 1.0 / n, dtype=np.float32)


def _analyze_request(layers: dict[str, np.ndarray]) -> pb.AnalyzeRequest:
    return pb.AnalyzeRequest(
        attention=pb.AttentionSet(
            layers=[
                pb.NamedTensor(
                    name=name,
                    tensor=pb.Tensor(
                        dtype=pb.FLOAT16 if a.dtype == np.float16 else pb.FLOAT32,
                        shape=list(a.shape),
                        content=a.tobytes(),
                    ),
                )
                for name, a in layers.items()
            ]
        )
    )


def test_analyze_of_sent_tensors_works_in_bounded_memory():
    n = 2048
    request = _analyze_request({"a": _uniform(n)})
    servicer = AttentionServicer(Engine(ServerConfig()))
    tracemalloc.start()
    try:
        response = servicer.Analyze(request, _Active())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The request's bytes (4 B a value, read once) and the float64 rollout (8), plus blocks:
    # 14 B a value measured; a float64 copy of the layer and a list of floats made it 44.
    assert peak < 20 * n * n, peak / (n * n)
    assert response.layers[0].heads[0].max_attention == pytest.approx(1.0 / n)
    assert list(response.rollout.shape) == [n, n]


def test_analyze_of_sent_tensors_equals_the_local_metrics():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 5, 5))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    layers = {"one": probs.astype(np.float32), "two": probs[:, :, ::-1].astype(np.float16)}
    response = AttentionServicer(Engine(ServerConfig())).Analyze(
        _analyze_request(layers), _Active()
    )
    local = summarize_layers(layers, rollout_as_list=False)
    for layer in response.layers:
        want = local["layers"][layer.layer_name]
        got = [h.entropy for h in layer.heads]
        np.testing.assert_allclose(got, want["attention_entropy"], rtol=1e-6)
    rollout = np.frombuffer(response.rollout.content, "<f4").reshape(tuple(response.rollout.shape))
    np.testing.assert_allclose(rollout, local["rollout"], rtol=1e-5, atol=1e-7)


def test_analyze_caps_each_layer_and_refuses_integers(server_target):
    stub = _stub(server_target)
    config = ServerConfig()
    side = int(np.sqrt(config.max_attention_elements)) + 1  # one layer just over the cap
    over = pb.Tensor(dtype=pb.FLOAT32, shape=[1, 1, side, side], content=b"")
    request = pb.AnalyzeRequest(
        attention=pb.AttentionSet(layers=[pb.NamedTensor(name="big", tensor=over)])
    )
    error = _rpc_error(lambda: stub.Analyze(request, timeout=60))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_attention_elements" in error.details()
    long = config.max_sequence_length + 1  # a rollout would hold long x long float64
    wide = pb.Tensor(dtype=pb.FLOAT16, shape=[1, 1, 1, long], content=bytes(2 * long))
    request = pb.AnalyzeRequest(
        attention=pb.AttentionSet(layers=[pb.NamedTensor(name="wide", tensor=wide)])
    )
    error = _rpc_error(lambda: stub.Analyze(request, timeout=60))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_sequence_length" in error.details()
    ints = pb.Tensor(dtype=pb.INT32, shape=[1, 1, 2, 2], content=np.ones(4, "<i4").tobytes())
    request = pb.AnalyzeRequest(
        attention=pb.AttentionSet(layers=[pb.NamedTensor(name="ints", tensor=ints)])
    )
    error = _rpc_error(lambda: stub.Analyze(request, timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "float32, float16 or float64" in error.details()


# ------------------------------------------------------------------ small, typed errors


def test_a_20_kb_unclosed_source_gives_a_short_invalid_argument(server_target):
    source = "network A { input: " + "(" * 20_000
    request = pb.CompileRequest(source=source, backend=pb.PYTORCH, filename="f" * 100_000)
    error = _rpc_error(lambda: _stub(server_target).Compile(request, timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _kind(error) == "DSLSyntaxError"
    assert len(error.details().encode()) <= MAX_MESSAGE_BYTES
    assert "^" in error.details() and "never closed" in error.details()


def test_a_1_mb_model_id_gives_a_short_not_found(server_target):
    request = pb.ExtractRequest(model_id="m" * 2**20)
    error = _rpc_error(lambda: list(_stub(server_target).ExtractAttention(request, timeout=60)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert _kind(error) == "ModelNotFoundError"
    assert len(error.details()) < 400


def test_long_names_and_lines_are_cut_in_dsl_messages(server_target):
    name = "x" * 200_000
    source = f"network A {{ input: (4, 8) layers: Dense(units=2, {name}=1) }}"
    error = _rpc_error(
        lambda: _stub(server_target).Compile(
            pb.CompileRequest(source=source, backend=pb.PYTORCH), timeout=60
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _kind(error) is not None
    assert len(error.details().encode()) <= MAX_MESSAGE_BYTES
    assert re.search(r"\n +\| +\^", error.details())  # line and caret survive a long name


def test_every_message_is_bounded_in_utf8_bytes():
    for text in ("x" * 100_000, "\u00e9" * 100_000, "\U0001f600" * 100_000):
        message = NeuralAttnError(text).message
        assert len(message.encode()) <= MAX_MESSAGE_BYTES
        assert "message cut" in message


def test_a_caret_line_is_a_window_around_the_column():
    source = (
        "network A { input: (4, 8) layers: " + "Dense(1) " * 5_000 + "Dense(1, units=2, units=3) }"
    )
    with pytest.raises(NeuralAttnError) as info:
        compile_source(source)
    lines = str(info.value).splitlines()
    shown, caret = lines[1], lines[2]
    assert len(shown) < 140 and shown.split("| ", 1)[1].startswith("...")
    # the caret still points at the repeated `units`
    assert shown[caret.index("^") :].startswith("units=3")


# ------------------------------------------------------------------ corrupt weights files


def _weights_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    network = compile_source(SMALL)
    weights = initial_weights(network, 0)
    files: dict[str, tuple[Path, str]] = {}
    npz = tmp_path / "plain.npz"
    np.savez(npz, **weights)  # as export-weights writes it
    files["npz"] = (npz, "npz")
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, **weights)
    files["npz_compressed"] = (packed, "npz")
    torch_model = get_backend("pytorch").build(network, seed=0)
    import torch

    pt = tmp_path / "model.pt"
    torch.save(torch_model.model.state_dict(), pt)
    files["torch"] = (pt, "torch")
    tf_model = get_backend("tensorflow").build(network, seed=0)
    h5 = tmp_path / "model.weights.h5"
    tf_model.model.save_weights(h5)
    files["keras_h5"] = (h5, "keras_h5")
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3"}')
        z.write(h5, "model.weights.h5")
    files["keras_archive"] = (archive, "keras_archive")
    from safetensors.numpy import save_file

    safetensors = tmp_path / "plain.safetensors"
    save_file(weights, str(safetensors))  # as export-weights -o *.safetensors writes it
    files["safetensors"] = (safetensors, "safetensors")
    return files


_FORMAT_WORDS = {
    "npz": ".npz",
    "torch": "PyTorch",
    "keras_h5": ".weights.h5",
    "keras_archive": ".keras",
    "safetensors": ".safetensors",
}


def test_corrupt_weights_files_of_every_format_are_invalid_argument(client, tmp_path):
    refused = 0
    for label, (path, fmt) in _weights_files(tmp_path).items():
        content = path.read_bytes()
        for offset in (0, 8, 40, len(content) // 4, len(content) // 2, len(content) - 40):
            broken = bytearray(content)
            for i in range(offset, min(len(broken), offset + 30)):
                broken[i] ^= 0xFF
            target = tmp_path / f"broken_{offset}_{path.name}"
            target.write_bytes(bytes(broken))
            try:
                client.compile(SMALL, backend="pytorch", weights=target, weights_format=fmt)
            except InvalidInputError as exc:  # INVALID_ARGUMENT, never INTERNAL
                refused += 1
                message = str(exc)
                if "holds NaN" not in message and "fit layer" not in message:
                    assert _FORMAT_WORDS[fmt] in message, (label, offset, message)
                    assert target.name in message, (label, offset, message)
                assert len(message.encode()) <= MAX_MESSAGE_BYTES
            # A flip inside the numbers of an unchecked format can still load; that is fine.
    assert refused >= 20
    assert client.compile(SMALL, backend="pytorch").model_id  # still serving


def test_the_two_reported_npz_files_name_the_format_and_file(client, tmp_path):
    network = compile_source(SMALL)
    weights = initial_weights(network, 0)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **weights)
    deflated = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(deflated))) as z:
        first = z.infolist()[0]
    start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
    deflated[start + 4 : start + 24] = bytes(20)  # corrupt deflate data
    # 30 bytes of the first .npy header flipped, in an archive whose checksums are right, so
    # that numpy's header parser (tokenize) is what fails.
    source = zipfile.ZipFile(io.BytesIO(client.export_weights(SMALL, backend="pytorch")))
    out = io.BytesIO()
    with source, zipfile.ZipFile(out, "w") as rewritten:
        for index, info in enumerate(source.infolist()):
            member = bytearray(source.read(info))
            if index == 0:
                header = member.index(b"{'descr'")
                member[header : header + 30] = bytes(b ^ 0xFF for b in member[header : header + 30])
            rewritten.writestr(info.filename, bytes(member))
    exported = out.getvalue()
    for name, content in (("deflate.npz", deflated), ("header.npz", exported)):
        path = tmp_path / name
        path.write_bytes(bytes(content))
        with pytest.raises(InvalidInputError, match=rf"\.npz weights file '{name}'"):
            client.compile(SMALL, backend="pytorch", weights=path)


# ------------------------------------------------------------------ one max_layers


def test_max_layers_is_one_number_and_refused_while_expanding(tmp_path):
    assert ServerConfig().max_layers == MAX_LAYERS
    engine = Engine(ServerConfig(max_layers=10))
    source = "network Deep {\n  input: (4,)\n  layers:\n    Dense(2) * 11\n}\n"
    with pytest.raises(DSLLimitError, match="more than 10 layers") as info:
        engine.compile(source, filename="", backend="pytorch", seed=0, network=None)
    assert isinstance(info.value, ResourceLimitError)
    assert info.value.status_name == "RESOURCE_EXHAUSTED"
    with pytest.raises(DSLLimitError, match=f"more than {MAX_LAYERS:,} layers"):
        compile_source(source.replace("* 11", f"* {MAX_LAYERS + 1}"))


def test_archives_that_would_unpack_past_the_model_are_refused_before_unpacking(tmp_path):
    from neural_attn.backends.base import read_weights as to_neutral

    network = compile_source(SMALL)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(200_000_000))
    assert len(bomb.getvalue()) < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInputError, match="unpacks to a model.weights.h5 of 200,000,008"):
            to_neutral(network, bomb.getvalue(), "keras_archive", name="bomb.keras")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000

    import torch

    saved = io.BytesIO()
    torch.save(get_backend("pytorch").build(network, seed=0).model.state_dict(), saved)
    packed = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(saved.getvalue())) as source,
        zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z,
    ):
        for info in source.infolist():
            z.writestr(info.filename, source.read(info))
    with pytest.raises(InvalidInputError, match="compressed entries"):
        to_neutral(network, packed.getvalue(), "torch", name="packed.pt")
    with pytest.raises(InvalidInputError, match="not a torch.save archive"):
        to_neutral(network, b"\x80\x02legacy", "torch", name="legacy.pt")


def test_safetensors_that_do_not_fit_are_refused_from_the_header(client, tmp_path):
    from safetensors.numpy import save

    weights = initial_weights(compile_source(SMALL), 0)
    key = next(iter(weights))
    wrong = {**weights, key: np.zeros((3, 3), np.float32)}
    with pytest.raises(InvalidInputError, match=rf"fit layer .*`{key}` is \(3, 3\) in the file"):
        client.compile(SMALL, backend="pytorch", weights=save(wrong), weights_format="safetensors")
    ints = {**weights, key: weights[key].astype(np.int32)}
    with pytest.raises(InvalidInputError, match=rf"`{key}` holds I32; weights must be floats"):
        client.compile(SMALL, backend="pytorch", weights=save(ints), weights_format="safetensors")
    header_too_long = (10**9).to_bytes(8, "little") + b'{"a": 1}'
    with pytest.raises(InvalidInputError, match=r"\.safetensors weights file 'x.safetensors'"):
        path = tmp_path / "x.safetensors"
        path.write_bytes(header_too_long)
        client.compile(SMALL, backend="pytorch", weights=path)
