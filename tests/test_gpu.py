"""GPU runs (`make test-gpu`): both backends serve from CUDA when it is there, and say so.

Skipped cleanly where no CUDA device is present."""

from __future__ import annotations

import numpy as np
import pytest

SOURCE = """
network OnGpu {
  input: (24,)
  layers:
    Embedding(input_dim=100, output_dim=32)
    TransformerEncoder(num_heads=4, ff_dim=64) * 2
    GlobalAveragePooling1D()
    Output(units=4, activation="softmax")
}
"""


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="no CUDA device here")]


@pytest.fixture(scope="module")
def servers():
    from neural_attn.client import AttentionClient
    from neural_attn.server.app import create_server
    from neural_attn.server.config import ServerConfig

    started = {}
    for device in ("cuda", "cpu"):
        server, port = create_server(port=0, config=ServerConfig(device=device))
        server.start()
        started[device] = (server, AttentionClient(f"127.0.0.1:{port}"))
    yield {device: c for device, (_, c) in started.items()}
    for server, c in started.values():
        c.close()
        server.stop(None)


@pytest.mark.parametrize("backend", ["tensorflow", "pytorch"])
def test_gpu_serves_the_same_attention_as_cpu(servers, backend):
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            pytest.skip("this TensorFlow build sees no GPU (tensorflow-cpu)")
    ids = np.random.default_rng(0).integers(1, 100, size=(3, 24))
    gpu = servers["cuda"].compile(SOURCE, backend=backend, seed=4)
    cpu = servers["cpu"].compile(SOURCE, backend=backend, seed=4)
    assert gpu.device.startswith("cuda") and cpu.device == "cpu"
    info = servers["cuda"].server_info()["backends"][backend]
    assert info["device"].startswith("cuda")
    got = dict(servers["cuda"].extract_attention(gpu, ids))
    want = dict(servers["cpu"].extract_attention(cpu, ids))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got[name].sum(-1), 1.0, atol=1e-5)
