"""What the real command shows: Prometheus metrics over HTTP, one JSON log line per request with
the request id the client sent, returned in trailing metadata."""

from __future__ import annotations

import json
import re

import grpc
import numpy as np
import pytest
from serverproc import SMALL, metric

from neural_attn.client import AttentionClient
from neural_attn.errors import ERROR_KIND_KEY
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
ATTENTION_BYTES = 2 * 4 * 10 * 10 * 4  # two layers of (1, 4, 10, 10) float32


def test_metrics_count_calls_codes_bytes_cache_and_streams(start_server):
    server = start_server("--port", "0", "--metrics-port", "0").wait_serving()
    assert server.metrics_url.startswith("http://127.0.0.1:")
    with AttentionClient(server.target, timeout=120) as client:
        model = client.compile(SMALL, backend="pytorch")  # a miss: built
        assert client.compile(SMALL, backend="pytorch").cached  # a hit
        layers = dict(client.extract_attention(model))  # a hit by model_id
        client.analyze(model=model)  # a hit by model_id
        assert client.ablate_heads(model)["heads"]  # a progress stream, read to its end
    assert sum(a.nbytes for a in layers.values()) == ATTENTION_BYTES
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AttentionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            list(stub.ExtractAttention(pb.ExtractRequest(model_id="nope"), timeout=30))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # a miss by model_id

    text = server.metrics()
    assert metric(text, "neural_attn_requests_total", method="Compile", code="OK") == 2
    assert metric(text, "neural_attn_requests_total", method="ExtractAttention", code="OK") == 1
    assert metric(text, "neural_attn_requests_total", method="Analyze", code="OK") == 1
    assert metric(text, "neural_attn_requests_total", method="AblateHeads", code="OK") == 1
    assert (
        metric(text, "neural_attn_requests_total", method="ExtractAttention", code="NOT_FOUND") == 1
    )
    assert metric(text, "neural_attn_request_duration_seconds_count", method="Compile") == 2
    assert metric(text, "neural_attn_request_duration_seconds_sum", method="Compile") > 0
    streamed = metric(text, "neural_attn_response_bytes_total", method="ExtractAttention")
    assert ATTENTION_BYTES < streamed < ATTENTION_BYTES + 4096  # the tensors plus headers
    assert metric(text, "neural_attn_response_messages_total", method="ExtractAttention") == 2
    assert metric(text, "neural_attn_request_bytes_total", method="Compile") > 2 * len(SMALL)
    assert metric(text, "neural_attn_cache_hits_total") == 4
    assert metric(text, "neural_attn_cache_misses_total") == 2
    assert metric(text, "neural_attn_cache_models") == 1
    assert metric(text, "neural_attn_in_flight_requests", method="ExtractAttention") == 0
    assert metric(text, "neural_attn_draining") == 0
    assert metric(text, "neural_attn_cache_bytes") > 0  # the parameters of the cached model


def test_one_json_log_line_per_request_with_the_clients_request_id(start_server):
    server = start_server("--port", "0", "--log-format", "json").wait_serving()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AttentionServiceStub(channel)
        request = pb.CompileRequest(source=SMALL, backend=pb.PYTORCH)
        _, call = stub.Compile.with_call(
            request, metadata=(("x-request-id", "req-42"),), timeout=120
        )
        assert ("x-request-id", "req-42") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as bad:
            stub.Compile(pb.CompileRequest(source="network {", backend=pb.PYTORCH), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        generated = dict(bad.value.trailing_metadata())["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        assert dict(bad.value.trailing_metadata())[ERROR_KIND_KEY].startswith("DSL")
    server.terminate()
    assert server.wait(30) == 0
    lines = [json.loads(line) for line in server.log().splitlines()]  # every line is JSON
    requests = [line for line in lines if line.get("event") == "request"]
    assert len(requests) == 2
    ok, failed = requests
    assert (ok["request_id"], ok["rpc"], ok["code"]) == ("req-42", "Compile", "OK")
    assert ok["duration_ms"] > 0 and ok["response_bytes"] > 0 and ok["peer"].startswith("ipv4:")
    assert (failed["request_id"], failed["code"]) == (generated, "INVALID_ARGUMENT")
    assert failed["error_kind"].startswith("DSL")


def test_a_token_alone_never_opens_the_metrics_endpoint_to_other_hosts(start_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t0k3n-" + "x" * 20)
    # A token and no --host: gRPC listens on every interface, plain HTTP metrics stay loopback.
    server = start_server(
        "--port", "0", "--token-file", str(token_file), "--metrics-port", "0"
    ).wait_started()
    assert "serving neural_attn.v1.AttentionService on 0.0.0.0:" in server.log()
    assert server.metrics_url.startswith("http://127.0.0.1:"), server.log()
    # An address the operator chose is followed.
    chosen = start_server("--port", "0", "--host", "0.0.0.0", "--metrics-port", "0")
    assert chosen.wait_started().metrics_url.startswith("http://0.0.0.0:")


def test_profile_request_bytes_are_counted(start_server):
    server = start_server("--port", "0", "--metrics-port", "0").wait_serving()
    batch = np.ones((2, 10, 16), np.float32)
    with AttentionClient(server.target, timeout=120) as client:
        model = client.compile(SMALL, backend="pytorch")
        client.profile_heads(model, [batch, batch, batch])
    sent = metric(server.metrics(), "neural_attn_request_bytes_total", method="ProfileHeads")
    assert sent >= 3 * batch.nbytes, sent
