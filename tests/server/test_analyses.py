"""The head-analysis RPCs are bounded before they start and stop when their call does (issue 17):
every refusal is the real status through the real server on loopback, with the numbers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from serverproc import health_status, metric

from neural_attn import wire
from neural_attn.client import AttentionClient
from neural_attn.errors import InvalidInputError, ResourceLimitError
from neural_attn.server.config import ServerConfig
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

BACKENDS = ("tensorflow", "pytorch")
SMALL = """
network Small {
  input: (6, 8)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=8) * 3
}
"""
# 102 bytes of source, 1,024 heads: the model.
WIDE = """
network Wide {
  input: (4, 64)
  layers:
    TransformerEncoder(num_heads=64, ff_dim=8) * 16
}
"""


def _attention(heads: int, n: int = 1, *, batch: int = 1) -> pb.AttentionSet:
    """One layer `l` of uniform attention (batch, heads, n, n), as the wire carries it."""
    probs = np.full((batch, heads, n, n), 1.0 / n, dtype="<f4")
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=list(probs.shape), content=probs.tobytes())
    return pb.AttentionSet(layers=[pb.NamedTensor(name="l", tensor=tensor)])


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.fixture()
def stub(server_target: str) -> Iterator[pb_grpc.AttentionServiceStub]:
    with grpc.insecure_channel(server_target) as channel:
        yield pb_grpc.AttentionServiceStub(channel)


@pytest.fixture(scope="module")
def tight() -> Iterator[str]:
    """A server whose analysis limits a small model reaches: 6 heads over 3 layers."""
    from neural_attn.server.app import create_server
    from neural_attn.server.config import ServerConfig

    config = ServerConfig(
        max_analysis_heads=4,
        max_similarity_heads=8,
        max_similarity_values=1000,
        max_held_attention_elements=5000,
        max_profile_items=10,
        max_layers=3,
    )
    server, port = create_server(port=0, config=config)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


# ------------------------------------------------------------------------ HeadSimilarity


def test_a_2000_head_similarity_is_refused_at_once_with_the_numbers(stub):
    request = pb.SimilarityRequest(heads=pb.HeadsRequest(attention=_attention(2000)))
    assert request.ByteSize() < 9000  # the 8 kB request
    started = time.monotonic()
    error = _error(lambda: stub.HeadSimilarity(request, timeout=5))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 2  # it ran 78 s and answered 52 MB
    details = error.details()
    assert "2,000 heads" in details and "1,999,000 pairs" in details
    assert "at most 384 heads" in details and "max_similarity_heads" in details


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_of_1024_heads_is_refused_a_similarity_before_its_pass(client, backend):
    model = client.compile(WIDE, backend=backend)
    with pytest.raises(ResourceLimitError, match=r"compare 1,024 heads \(523,776 pairs"):
        client.head_similarity(model=model)
    # Within max_analysis_heads, the per-head analyses still read all of it.
    result = client.analyze_heads(model=model)
    assert sum(len(m["attention_entropy"]) for m in result["layers"].values()) == 1024


def test_similarity_bounds_its_work_and_what_it_holds(tight):
    with AttentionClient(tight, timeout=60) as c:
        # 8 heads of 20 x 20: 28 pairs x 400 values is over 1,000.
        uniform = {"l": np.full((1, 8, 20, 20), 1 / 20)}
        with pytest.raises(
            ResourceLimitError, match=r"28 pairs of heads, 11,200 values .* at most 1,000 "
        ):
            c.head_similarity(uniform)
        # Heads of two lengths make no comparable pair, but both layers are held at once.
        two = {"a": np.full((1, 1, 60, 60), 1 / 60), "b": np.full((1, 1, 59, 59), 1 / 59)}
        with pytest.raises(ResourceLimitError, match=r"at once: 7,081 values; .* at most 5,000"):
            c.head_similarity(two)
        assert c.head_similarity({"l": np.full((1, 2, 5, 5), 0.2)})["distance"].shape == (2, 2)


# ---------------------------------------------------------------- the other analyses' limits


def test_every_head_analysis_is_bounded_by_the_heads_it_reads(tight):
    with AttentionClient(tight, timeout=120) as c:
        model = c.compile(SMALL, backend="pytorch")  # 3 layers x 2 heads: 6 > 4
        data = np.random.default_rng(0).standard_normal((2, 6, 8)).astype(np.float32)
        limit = r"6 heads \(3 layers\); .* at most 4 heads in one call \(max_analysis_heads\)"
        with pytest.raises(ResourceLimitError, match=f"AnalyzeHeads would read {limit}"):
            c.analyze_heads(model=model, data=data)
        with pytest.raises(ResourceLimitError, match=f"ProfileHeads would read {limit}"):
            c.profile_heads(model, [data])
        with pytest.raises(ResourceLimitError, match=f"CompareCheckpoints would read {limit}"):
            c.compare_checkpoints(model, model, data)
        with pytest.raises(ResourceLimitError, match=r"every head would ablate 6 heads"):
            c.ablate_heads(model, data)
        # Fewer layers fit: what the refusals advise.
        two = ["transformer_encoder_0", "transformer_encoder_1"]
        assert len(c.analyze_heads(model=model, data=data, layers=two)["layers"]) == 2
        assert c.profile_heads(model, [data], layers=two)["samples"] == 2
        assert len(c.ablate_heads(model, data, heads=[(two[0], 0), (two[1], 1)])["heads"]) == 2


def test_a_profile_is_bounded_by_its_items_before_each_pass(tight):
    with AttentionClient(tight, timeout=120) as c:
        model = c.compile(SMALL, backend="pytorch")
        layers = ["transformer_encoder_0"]
        batch = np.zeros((4, 6, 8), np.float32)
        with pytest.raises(ResourceLimitError, match=r"announces 11 items; .* at most 10"):
            c.profile_heads(model, [batch], layers=layers, total_items=11)
        with pytest.raises(ResourceLimitError, match=r"would reach 12 items; .* at most 10"):
            c.profile_heads(model, [batch, batch, batch], layers=layers)
        assert c.profile_heads(model, [batch, batch], layers=layers)["samples"] == 8


def test_sent_attention_is_bounded_by_its_layers_and_heads(tight):
    with AttentionClient(tight, timeout=60) as c:
        layers = {f"l{i}": np.full((1, 1, 2, 2), 0.5) for i in range(4)}
        with pytest.raises(
            ResourceLimitError, match=r"attention sent has 4 layers; .* at most 3 .*max_layers"
        ):
            c.analyze_heads(layers)
        with pytest.raises(ResourceLimitError, match=r"would read 5 heads \(1 layers\)"):
            c.analyze_heads({"l": np.full((1, 5, 2, 2), 0.5)})


# ------------------------------------------------------------------------------ mask positions


def test_mask_positions_are_bounded_collapsed_sorted_and_checked(client, stub):
    n = 6
    attention = {"l": np.full((1, 1, n, n), 1 / n)}
    # The 1,000,000 zeros (3 MB echoed back) are refused from their count.
    request = pb.HeadsRequest(
        attention=_attention(1, n), mask=pb.AnalysisMask(positions=[0] * 1_000_000)
    )
    error = _error(lambda: stub.AnalyzeHeads(request, timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    longest = f"{ServerConfig().max_sequence_length:,}"
    assert "1,000,000 positions" in error.details() and longest in error.details()
    # Duplicates and the two names of one position are one position, echoed once, sorted.
    request = pb.HeadsRequest(
        attention=_attention(1, n), mask=pb.AnalysisMask(positions=[5, 0, -1, 0] * 2000)
    )
    answer = stub.AnalyzeHeads(request, timeout=30)
    assert list(answer.provenance.masked) == ["positions 0, 5"]
    assert answer.ByteSize() < 1000
    assert client.analyze_heads(attention, exclude_positions=[3, -6, 3])["provenance"][
        "masked"
    ] == ["positions 0, 3"]
    for outside in (6, -7):
        with pytest.raises(InvalidInputError, match=f"masked position {outside} is outside a "):
            client.analyze_heads(attention, exclude_positions=[0, outside])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_positions_outside_a_models_sequence_are_refused_before_the_pass(client, backend):
    model = client.compile(SMALL, backend=backend)
    with pytest.raises(InvalidInputError, match="masked position 6 is outside a sequence of 6"):
        client.analyze_heads(model=model, exclude_positions=[6])
    with pytest.raises(InvalidInputError, match="masked position -7 is outside a sequence of 6"):
        client.compare_checkpoints(model, model, exclude_positions=[-7])
    result = client.head_similarity(model=model, exclude_positions=[-1, 5, 0])
    assert result["provenance"]["masked"] == ["positions 0, 5"]


# --------------------------------------------------------------------------------- token ids


def test_float_token_ids_are_refused_for_padding_masks_as_the_extract_path_does(client):
    padded = {"l": np.full((1, 1, 4, 4), 0.25)}
    with pytest.raises(
        InvalidInputError,
        match=r"mask_padding needs token ids: token_ids is not \(batch, seq\) integer ids "
        r"\(it is float32 of shape \(1, 4\)\)",
    ):
        client.analyze_heads(
            padded, mask_padding=True, token_ids=np.array([[3, 4, 0, 0]], np.float32)
        )
    with pytest.raises(InvalidInputError, match="token_ids is not"):
        client.head_similarity(
            padded, mask_padding=True, token_ids=np.array([[3.0, 4.0, 0.0, 0.0]])
        )
    # The extract path: the same words for its input.
    model = client.compile(SMALL, backend="pytorch")
    floats = np.zeros((1, 6, 8), np.float32)
    with pytest.raises(
        InvalidInputError,
        match=r"mask_padding needs token ids: the input is not \(batch, seq\) integer ids "
        r"\(it is float32 of shape \(1, 6, 8\)\)",
    ):
        client.analyze_heads(model=model, data=floats, mask_padding=True)
    # Integer ids still mask padding.
    ids = np.array([[3, 4, 0, 0]], np.int64)
    result = client.analyze_heads(padded, mask_padding=True, token_ids=ids)
    assert result["layers"]["l"]["attention_entropy"][0] == pytest.approx(np.log(2))


# ------------------------------------------------------------------------------------ profiles


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_profile_whose_mask_removes_everything_is_all_zeros(client, backend):
    model = client.compile(SMALL, backend=backend)
    batch = np.random.default_rng(1).standard_normal((3, 6, 8)).astype(np.float32)
    profile = client.profile_heads(model, [batch], exclude_positions=range(6))
    assert profile["samples"] == 3
    layers = profile["layers"]
    assert sorted(layers) == [
        "transformer_encoder_0",
        "transformer_encoder_1",
        "transformer_encoder_2",
    ]
    for heads in layers.values():
        assert [h["head"] for h in heads] == [0, 1]
        for head in heads:
            assert head["samples"] == 0
            assert set(head["labels"].values()) == {0.0}
            for stat in head["metrics"].values():
                assert stat["mean"] == stat["std"] == 0.0
                assert set(stat["quantiles"].values()) == {0.0}
    assert profile["provenance"]["masked"] == ["positions 0, 1, 2, 3, 4, 5"]


# ------------------------------------------------------- the installed server, as a subprocess


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_the_server_refuses_a_2000_head_similarity_and_stops_one_past_its_deadline(
    start_server,
):
    server = start_server(
        "--port", "0", "--max-similarity-heads", "1500", "--max-similarity-values", "1G"
    ).wait_serving()
    pid = server.proc.pid
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AttentionServiceStub(channel)

        def similarity(heads: int, timeout: float) -> grpc.RpcError:
            request = pb.SimilarityRequest(heads=pb.HeadsRequest(attention=_attention(heads)))
            return _error(lambda: stub.HeadSimilarity(request, timeout=timeout))

        error = similarity(2000, 5)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2,000 heads" in error.details() and "at most 1,500 heads" in error.details()
        # Within the limit: 1,400 heads are 979,300 pairs, half a minute of work.
        started = time.monotonic()
        error = similarity(1400, 1)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
        time.sleep(0.5)  # the work asks about every pair: it has stopped by now
        before = _cpu_seconds(pid)
        time.sleep(1.0)
        assert _cpu_seconds(pid) - before < 0.2, server.log()  # it ran on at 100% of a core
        # And it answers at once.
        started = time.monotonic()
        assert health_status(channel, timeout=5) == health_pb2.HealthCheckResponse.SERVING
        small = pb.SimilarityRequest(heads=pb.HeadsRequest(attention=_attention(2, 4)))
        assert list(stub.HeadSimilarity(small, timeout=5).distance.shape) == [2, 2]
        assert time.monotonic() - started < 2
    log = server.log()
    assert "Traceback" not in log
    assert "rpc=HeadSimilarity code=DEADLINE_EXCEEDED" in log  # said as such, not CANCELLED


@pytest.mark.slow
def test_profile_request_bytes_are_counted_in_the_metrics_and_the_log_line(start_server):
    server = start_server("--port", "0", "--metrics-port", "0").wait_serving()
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((8, 6, 8)).astype(np.float32) for _ in range(3)]
    with AttentionClient(server.target, timeout=120) as c:
        model = c.compile(SMALL, backend="pytorch")
        assert c.profile_heads(model, batches)["samples"] == 24
    tensors = sum(wire.to_proto(b).ByteSize() for b in batches)
    counted = metric(server.metrics(), "neural_attn_request_bytes_total", method="ProfileHeads")
    assert tensors < counted < tensors + 4096  # the batches and the first message's fields (was 0)
    server.terminate()
    assert server.wait(30) == 0
    (line,) = [line for line in server.log().splitlines() if "rpc=ProfileHeads" in line]
    assert f"request_bytes={int(counted)} " in line
