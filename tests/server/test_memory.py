"""The installed server reuses the memory a pass freed: after its first calls, a call faults in
almost no fresh pages (glibc's default thresholds put a PyTorch pass's tensors on new pages
every layer: 18,500 page faults and 18 % of the pass at MiniLM-L6 and 512 tokens)."""

from __future__ import annotations

import numpy as np
import pytest
from serverproc import ServerProcess

from neural_attn.server.memory import on_glibc, operator_tuned

pytest.importorskip("torch")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not on_glibc(), reason="the thresholds are glibc's"),
    pytest.mark.skipif(operator_tuned(), reason="this machine's environment sets malloc's own"),
]

# 2 layers of 12 heads x 512²: 12 MiB of probabilities a layer, 3,072 pages.
SOURCE = """
network Reuse {
  input: (512, 48)
  layers:
    TransformerEncoder(num_heads=12, ff_dim=96) * 2
}
"""
LAYER_PAGES = 12 * 512 * 512 * 4 // 4096


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def _faults_per_call(server: ServerProcess) -> float:
    """The page faults of the server's process in a warm call: the median over ten calls after
    two (the first calls meet each size for the first time)."""
    from neural_attn.client import AttentionClient

    x = np.random.default_rng(0).standard_normal((1, 512, 48)).astype(np.float32)
    server.wait_serving()
    faults = []
    with AttentionClient(server.target) as client:
        model = client.compile(SOURCE, backend="pytorch")
        for _ in range(12):
            before = _minor_faults(server.proc.pid)
            shapes = [a.shape for _, a in client.extract_attention(model, x)]
            assert shapes == [(1, 12, 512, 512)] * 2
            faults.append(_minor_faults(server.proc.pid) - before)
    return float(np.median(faults[2:]))


def test_a_warm_server_faults_in_almost_no_fresh_pages(start_server):
    server = start_server("--port", "0")
    assert _faults_per_call(server) < LAYER_PAGES / 10
    assert "malloc keeps freed memory for the next pass" in server.log()


def test_the_operators_malloc_settings_are_left_alone(start_server):
    # An operator who asks glibc to map every block afresh and keep nothing gets just that.
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    server = start_server("--port", "0", env=env)
    assert _faults_per_call(server) > LAYER_PAGES
    assert "malloc keeps freed memory" not in server.log()


def test_operator_tuned_reads_malloc_variables_and_tunables():
    assert operator_tuned({"MALLOC_ARENA_MAX": "2"})
    assert operator_tuned({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
    assert not operator_tuned({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2", "PATH": "/bin"})
