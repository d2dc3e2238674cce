"""A deadline that passes while one long attention layer is being computed stops the work there,
between two tiles of query rows, on the installed server as a subprocess, in both backends: the
server's CPU falls idle right after and it answers the next call at once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

# One layer of 32 heads x 8,192^2 scores (2.1 billion, seconds of work), in tiles of 2^22
# (PyTorch) or 2^24 (TensorFlow); computed whole (which the limits now refuse) it ran on for
# seconds past the deadline.
ONE_LONG_LAYER = """
network OneLong {
  input: (8192, 64)
  layers:
    TransformerEncoder(num_heads=32, ff_dim=64)
}
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
@pytest.mark.parametrize("backend", [pb.PYTORCH, pb.TENSORFLOW], ids=["pytorch", "tensorflow"])
def test_a_deadline_inside_one_long_layer_stops_the_pass_between_tiles(start_server, backend):
    server = start_server("--port", "0").wait_serving()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AttentionServiceStub(channel)
        compiled = stub.Compile(
            pb.CompileRequest(source=ONE_LONG_LAYER, backend=backend), timeout=120
        )
        extract = pb.ExtractRequest(model_id=compiled.model_id)
        for call in (
            lambda: stub.Analyze(pb.AnalyzeRequest(extract=extract), timeout=1.5),
            lambda: list(stub.ExtractAttention(extract, timeout=1.5)),
        ):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 3
            time.sleep(1.0)  # a tile takes a fraction of a second: the pass has stopped by now
            before = _cpu_seconds(server.proc.pid)
            time.sleep(1.0)
            assert _cpu_seconds(server.proc.pid) - before < 0.3, server.log()[-2000:]
            info = stub.GetServerInfo(pb.ServerInfoRequest(), timeout=2)
            assert info.max_sequence_length >= 8192
    assert "Traceback" not in server.log()
