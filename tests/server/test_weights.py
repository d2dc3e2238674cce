"""Trained weights: every format loads into either backend through the real server, a file
that does not fit is refused precisely, and attention follows the weights."""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))

from reference import encoder  # noqa: E402

from neural_attn import wire  # noqa: E402
from neural_attn.backends import weight_files  # noqa: E402
from neural_attn.backends.base import get_backend  # noqa: E402
from neural_attn.backends.weights import initial_weights  # noqa: E402
from neural_attn.dsl import compile_source  # noqa: E402
from neural_attn.errors import InvalidInputError  # noqa: E402
from neural_attn.v1 import attention_pb2 as pb  # noqa: E402

BACKENDS = ("tensorflow", "pytorch")
SOURCE = """
network Trained {
  input: (9,)
  layers:
    Embedding(input_dim=30, output_dim=16)
    TransformerEncoder(num_heads=4, ff_dim=24)
    GlobalAveragePooling1D()
    Output(units=3, activation="softmax")
}
"""
IDS = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5], [2, 7, 1, 8, 2, 8, 1, 8, 2]], dtype=np.int64)


@pytest.fixture(scope="module")
def network():
    return compile_source(SOURCE)


@pytest.fixture(scope="module")
def trained(network):
    """'Trained' weights: not what any seed gives, with sharp attention."""
    rng = np.random.default_rng(42)
    weights = initial_weights(network, seed=123)
    for key in weights:
        weights[key] = weights[key] + 0.1 * rng.standard_normal(weights[key].shape).astype(
            np.float32
        )
        if key.endswith(("query_kernel", "key_kernel")):
            weights[key] *= 3.0
    return weights


def _reference(weights):
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    _, probs = encoder(w["embedding_0/embeddings"][IDS], w, "transformer_encoder_0/")
    return probs


def _native_files(network, trained, tmp_path):
    """The same trained weights in each framework's own format."""
    torch_model = get_backend("pytorch").build(network, seed=0)
    torch_model.set_weights(trained)
    import torch

    pt = tmp_path / "trained.pt"
    torch.save(torch_model.model.state_dict(), pt)
    tf_model = get_backend("tensorflow").build(network, seed=0)
    tf_model.set_weights(trained)
    h5 = tmp_path / "trained.weights.h5"
    tf_model.model.save_weights(h5)
    archive = tmp_path / "trained.keras"
    with zipfile.ZipFile(archive, "w") as z:  # the layout of a Keras v3 archive
        z.writestr("metadata.json", '{"keras_version": "3"}')
        z.writestr("config.json", '{"class_name": "Evil", "module": "os"}')  # never read
        z.write(h5, "model.weights.h5")
    npz = tmp_path / "trained.npz"
    np.savez(npz, **trained)
    return {"torch": pt, "keras_h5": h5, "keras_archive": archive, "npz": npz}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_format_loads_into_either_backend(client, network, trained, tmp_path, backend):
    expected = _reference(trained)
    ids = set()
    for fmt, path in _native_files(network, trained, tmp_path).items():
        model = client.compile(SOURCE, backend=backend, weights=path)
        assert model.weights_sha256, fmt
        ids.add(model.model_id)
        attention = dict(client.extract_attention(model, IDS))["transformer_encoder_0"]
        np.testing.assert_allclose(attention, expected, atol=1e-5, err_msg=fmt)
    assert len(ids) == 4  # the file's bytes are part of the model id
    random_init = client.compile(SOURCE, backend=backend)
    assert random_init.weights_sha256 == "" and random_init.model_id not in ids


def test_export_weights_converts_between_frameworks(client, network, trained, tmp_path):
    files = _native_files(network, trained, tmp_path)
    npz = client.export_weights(SOURCE, backend="tensorflow", weights=files["torch"])
    with np.load(io.BytesIO(npz)) as exported:
        assert sorted(exported.files) == sorted(trained)
        for key in trained:
            np.testing.assert_allclose(exported[key], trained[key], atol=1e-7, err_msg=key)
    a = client.compile(SOURCE, backend="pytorch", weights=npz, weights_format="npz")
    b = client.compile(SOURCE, backend="tensorflow", weights=files["keras_h5"])
    got_a = dict(client.extract_attention(a, IDS))["transformer_encoder_0"]
    got_b = dict(client.extract_attention(b, IDS))["transformer_encoder_0"]
    np.testing.assert_allclose(got_a, got_b, atol=1e-5)


def test_planted_zero_query_gives_exactly_uniform_attention(client, network, trained):
    planted = dict(trained)
    for key in ("query_kernel", "query_bias"):
        full = f"transformer_encoder_0/attention/{key}"
        planted[full] = np.zeros_like(planted[full])
    buffer = io.BytesIO()
    np.savez(buffer, **planted)
    for backend in BACKENDS:
        model = client.compile(SOURCE, backend=backend, weights=buffer.getvalue())
        attention = dict(client.extract_attention(model, IDS))["transformer_encoder_0"]
        np.testing.assert_allclose(attention, 1.0 / 9, rtol=1e-6, atol=0)


def test_weights_that_do_not_fit_name_the_layer_and_both_shapes(client, network, trained, tmp_path):
    wrong = dict(trained)
    wrong["output_0/kernel"] = np.zeros((16, 4), np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **wrong)
    with pytest.raises(InvalidInputError, match=r"`output_0`.*\(16, 4\).*\(16, 3\)"):
        client.compile(SOURCE, backend="pytorch", weights=buffer.getvalue())

    other = SOURCE.replace("units=3", "units=5")
    files = _native_files(
        compile_source(other), initial_weights(compile_source(other), 1), tmp_path
    )
    for fmt in ("torch", "keras_h5"):
        # each framework names the kernel in its own layout: (in, out) or torch's (out, in)
        pattern = r"fit layer `output_0`.*\((16, 5|5, 16)\).*\((16, 3|3, 16)\)"
        with pytest.raises(InvalidInputError, match=pattern):
            client.compile(SOURCE, backend="tensorflow", weights=files[fmt])
    with pytest.raises(InvalidInputError, match="cannot tell the format"):
        client.compile(SOURCE, backend="pytorch", weights=b"garbage")
    with pytest.raises(InvalidInputError, match="weights_only=True"):
        client.compile(SOURCE, backend="pytorch", weights=b"garbage", weights_format="torch")


def test_weights_directory_paths_stay_inside(network, trained, tmp_path):
    from neural_attn.client import AttentionClient
    from neural_attn.server.app import create_server
    from neural_attn.server.config import ServerConfig

    root = tmp_path / "weights"
    (root / "team").mkdir(parents=True)
    np.savez(root / "team" / "trained.npz", **trained)
    np.savez(tmp_path / "secret.npz", **trained)
    server, port = create_server(port=0, config=ServerConfig(weights_dir=str(root)))
    server.start()
    try:
        with AttentionClient(f"127.0.0.1:{port}") as c:
            assert c.server_info()["weights_directory"] is True
            model = c.compile(SOURCE, backend="pytorch", server_weights="team/trained.npz")
            got = dict(c.extract_attention(model, IDS))["transformer_encoder_0"]
            np.testing.assert_allclose(got, _reference(trained), atol=1e-5)
            for escape in ("../secret.npz", str(tmp_path / "secret.npz"), "team/../../secret.npz"):
                with pytest.raises(InvalidInputError, match="outside the server's weights"):
                    c.compile(SOURCE, backend="pytorch", server_weights=escape)
            with pytest.raises(InvalidInputError, match="no weights file"):
                c.compile(SOURCE, backend="pytorch", server_weights="team/missing.npz")
    finally:
        server.stop(None)


def test_weights_names_the_os_cannot_take_are_refused_without_the_servers_paths(trained, tmp_path):
    from neural_attn.client import AttentionClient
    from neural_attn.server.app import create_server
    from neural_attn.server.config import ServerConfig

    root = tmp_path / "weights-dir"
    root.mkdir()
    np.savez(root / "locked.npz", **trained)
    server, port = create_server(port=0, config=ServerConfig(weights_dir=str(root)))
    server.start()
    try:
        with AttentionClient(f"127.0.0.1:{port}") as c:
            refusals = {}
            for name in ("a" * 5000 + ".npz", "team/" + "b" * 300 + ".npz", "a\x00b.npz"):
                with pytest.raises(InvalidInputError) as info:
                    c.compile(SOURCE, backend="pytorch", server_weights=name)
                refusals[name] = str(info.value)
            if os.geteuid() != 0:  # root reads it anyway
                (root / "locked.npz").chmod(0)
                with pytest.raises(InvalidInputError, match="cannot be read: Permission") as locked:
                    c.compile(SOURCE, backend="pytorch", server_weights="locked.npz")
                refusals["locked"] = str(locked.value)
    finally:
        server.stop(None)
    for message in refusals.values():
        assert str(tmp_path) not in message and "weights-dir" not in message, message
    too_long = "at most 1,024 characters and 255 bytes between slashes"
    assert "(5,004 characters, 5,004 bytes in its longest part)" in refusals["a" * 5000 + ".npz"]
    assert too_long in refusals["a" * 5000 + ".npz"]
    assert too_long in refusals["team/" + "b" * 300 + ".npz"]
    assert "embedded null byte" in refusals["a\x00b.npz"]


def test_without_a_weights_directory_paths_are_refused(client):
    with pytest.raises(InvalidInputError, match="no weights directory"):
        client.compile(SOURCE, backend="pytorch", server_weights="x.npz")


def test_attention_is_bit_identical_across_server_restarts(trained):
    from neural_attn.client import AttentionClient
    from neural_attn.server.app import create_server

    buffer = io.BytesIO()
    np.savez(buffer, **trained)
    runs = []
    for _ in range(2):
        server, port = create_server(port=0)
        server.start()
        try:
            with AttentionClient(f"127.0.0.1:{port}") as c:
                run = {}
                for backend in BACKENDS:
                    for weights in (None, buffer.getvalue()):
                        model = c.compile(SOURCE, backend=backend, seed=9, weights=weights)
                        run[(backend, weights is None, model.model_id)] = dict(
                            c.extract_attention(model, IDS)
                        )["transformer_encoder_0"]
                runs.append(run)
        finally:
            server.stop(None)
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert runs[0][key].tobytes() == runs[1][key].tobytes(), key


def test_server_info_reports_backends_and_devices(client):
    info = client.server_info()
    assert info["default_backend"] == "tensorflow"
    for name in BACKENDS:
        backend = info["backends"][name]
        assert backend["available"] and backend["version"]
        assert backend["device"] in ("cpu", "cuda:0")


@pytest.mark.slow
def test_weights_files_larger_than_grpcs_default_message_size_load(client):
    source = (Path(__file__).resolve().parents[1] / "data/corpus/transformer.neural").read_text()
    npz = client.export_weights(source, backend="pytorch", seed=21)
    assert len(npz) > 30 * 1024 * 1024  # well over gRPC's 4 MiB default
    model = client.compile(source, backend="tensorflow", weights=npz)
    same_seed = client.compile(source, backend="tensorflow", seed=21)
    ids = np.random.default_rng(0).integers(1, 10000, size=(1, 100))
    got = dict(client.extract_attention(model, ids))
    want = dict(client.extract_attention(same_seed, ids))
    np.testing.assert_array_equal(got["transformer_encoder_0"], want["transformer_encoder_0"])


def test_safetensors_are_exported_and_read_by_the_same_neutral_names(client, trained, tmp_path):
    from safetensors.numpy import load, save

    exported = client.export_weights(
        SOURCE, backend="pytorch", weights=_npz(trained), export_format="safetensors"
    )
    arrays = load(exported)
    assert sorted(arrays) == sorted(trained)
    for key in trained:
        np.testing.assert_array_equal(arrays[key], trained[key], err_msg=key)
    path = tmp_path / "w.safetensors"
    path.write_bytes(save(trained))
    expected = _reference(trained)
    for backend in BACKENDS:
        model = client.compile(SOURCE, backend=backend, weights=path)  # guessed from the name
        got = dict(client.extract_attention(model, IDS))["transformer_encoder_0"]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    unnamed = client.compile(SOURCE, backend="tensorflow", weights=path.read_bytes())
    assert unnamed.weights_sha256 == model.weights_sha256  # guessed from the header


def test_export_weights_writes_only_neutral_formats(client):
    with pytest.raises(InvalidInputError, match="export_format must be one of npz, safetensors"):
        client.export_weights(SOURCE, export_format="torch")
    # The server refuses one too (before compiling), whoever sends the request.
    request = pb.ExportWeightsRequest(
        model=pb.CompileRequest(source=SOURCE), format=pb.TORCH_STATE_DICT
    )
    with pytest.raises(InvalidInputError, match="exported as npz or safetensors, not torch"):
        client._unary("ExportWeights", request)


def test_one_table_of_weights_formats_names_what_the_backends_read_and_write():
    assert sorted(wire.WEIGHTS_FORMAT_NAMES.values()) == sorted(weight_files.FORMATS)
    assert set(wire.WEIGHTS_FORMAT_NAMES) == set(pb.WeightsFormat.values()) - {
        pb.WEIGHTS_FORMAT_UNSPECIFIED
    }
    assert wire.EXPORT_FORMATS == weight_files.NEUTRAL_FORMATS
    assert wire.EXPORT_FORMATS[0] == weight_files.NPZ  # ExportWeights' default


def _npz(weights):
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    return buffer.getvalue()


def test_the_cli_writes_safetensors_by_the_output_name(server_target, network, tmp_path, capsys):
    from safetensors.numpy import load_file

    from neural_attn.client.cli import main

    model = tmp_path / "trained.neural"
    model.write_text(SOURCE)
    out = tmp_path / "w.safetensors"
    args = ["export-weights", str(model), "--server", server_target, "--backend", "pytorch"]
    assert main([*args, "--seed", "4", "-o", str(out)]) == 0
    assert "neutral .safetensors" in capsys.readouterr().out
    arrays, seeded = load_file(str(out)), initial_weights(network, 4)
    assert sorted(arrays) == sorted(seeded)
    for key in seeded:
        np.testing.assert_allclose(arrays[key], seeded[key], atol=1e-7, err_msg=key)


def test_an_inline_file_past_the_request_limit_is_refused_before_sending(
    server_target: str, tmp_path: Path
) -> None:
    from neural_attn.client import AttentionClient
    from neural_attn.errors import ResourceLimitError

    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (9 * 2**20))
    source = "network N {\n  input: (4, 8)\n  layers:\n    Dense(4)\n}\n"
    with AttentionClient(server_target, max_message_bytes=8 * 2**20) as client:
        with pytest.raises(ResourceLimitError, match="--server-weights"):
            client.compile(source, weights=big)
        assert client.compile(source).model_id  # nothing else broke
