"""The SDK's connection manners: targets, retry policy, deadlines, and riding out a restart."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from serverproc import SMALL, free_port

from neural_attn.client import AttentionClient
from neural_attn.client import _connection as conn
from neural_attn.errors import InvalidInputError, ServerUnavailableError
from neural_attn.v1 import attention_pb2 as pb


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("localhost:50051", "localhost:50051"),
        ("dns:///attn.internal:50051", "dns:///attn.internal:50051"),
        ("127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        (" 127.0.0.1:5001 , localhost:5002 ", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        ("[::1]:5001,[::1]:5002", "ipv6:[::1]:5001,[::1]:5002"),
        ("ipv4:10.0.0.1:1,10.0.0.2:1", "ipv4:10.0.0.1:1,10.0.0.2:1"),
    ],
)
def test_targets(target, expected):
    assert conn.normalize_target(target) == expected


@pytest.mark.parametrize(
    "target", ["127.0.0.1:1,[::1]:2", "dns:///a:1,dns:///b:1", "127.0.0.1,127.0.0.1:2"]
)
def test_bad_comma_lists_say_what_is_wrong(target):
    with pytest.raises(InvalidInputError):
        conn.normalize_target(target)


def test_the_service_config_balances_and_retries_unavailable_on_every_rpc():
    options = dict(conn.channel_options(1024))
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method_config,) = config["methodConfig"]
    names = {n["method"] for n in method_config["name"]}
    service = pb.DESCRIPTOR.services_by_name["AttentionService"]
    assert names == {m.name for m in service.methods}  # every call is idempotent
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert options["grpc.keepalive_time_ms"] > 0
    assert options["grpc.max_reconnect_backoff_ms"] <= 1_000


def test_the_rpc_table_names_every_method_of_the_service_with_a_deadline():
    service = pb.DESCRIPTOR.services_by_name["AttentionService"]
    assert set(conn.RPCS) == {m.name for m in service.methods}
    assert all(rpc.deadline > 0 for rpc in conn.RPCS.values())
    client = AttentionClient("127.0.0.1:1", connect_timeout=0.01)
    assert client._timeouts == conn.DEFAULT_DEADLINES
    client.close()


def test_calls_carry_a_deadline_per_kind_wait_for_ready_and_a_request_id():
    seen: list[dict] = []

    class Stub:
        def __getattr__(self, method):
            def call(request, **kwargs):
                seen.append({"method": method, **kwargs})
                raise RuntimeError("stop here")

            return call

    client = AttentionClient("127.0.0.1:1", connect_timeout=0.01)
    client._stub = Stub()  # type: ignore[assignment]
    client._ready.wait = lambda timeout: None  # type: ignore[method-assign]
    for call in (lambda: client.server_info(), lambda: client.compile(SMALL)):
        with pytest.raises(RuntimeError):
            call()
    info, compile_ = seen
    assert info["timeout"] == conn.DEFAULT_DEADLINES["GetServerInfo"]
    assert compile_["timeout"] == conn.DEFAULT_DEADLINES["Compile"]
    assert info["wait_for_ready"] and compile_["wait_for_ready"]
    assert dict(info["metadata"])["x-request-id"] != dict(compile_["metadata"])["x-request-id"]
    client.close()
    with AttentionClient("127.0.0.1:1", timeout=7) as fixed:
        assert fixed._timeouts["ExtractAttention"] == 7


@pytest.mark.slow
def test_a_client_that_called_during_an_outage_succeeds_once_the_server_is_back(start_server):
    port = free_port()
    args = ("--port", str(port), "--grace", "5")
    server = start_server(*args).wait_serving()
    client = AttentionClient(f"127.0.0.1:{port}", connect_timeout=2)
    assert client.compile(SMALL, backend="pytorch").attention_layers

    server.terminate()
    assert server.wait(30) == 0
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="no neural-attn server answered"):
        client.compile(SMALL, backend="pytorch")  # the outage: nobody listens
    assert time.monotonic() - started < 10  # bounded by connect_timeout, not the deadline

    # A call made during the outage waits for the server, within its connect timeout...
    waiting = AttentionClient(f"127.0.0.1:{port}", connect_timeout=60)
    result: dict[str, object] = {}

    def call_while_down() -> None:
        try:
            result["model"] = waiting.compile(SMALL, backend="pytorch")
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=call_while_down)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive(), f"the call did not wait for the server: {result}"
    restarted = start_server(*args).wait_serving()
    back = time.monotonic()

    # The client that failed during the outage succeeds on its next call, though that call
    # may wait only 2 s for a connection (channel back-off must not outlast it)...
    assert client.compile(SMALL, backend="pytorch").attention_layers
    recovered = time.monotonic() - back
    assert recovered < 10, f"the next call took {recovered:.1f} s after the restart"
    # ... and the call made during the outage went through once the server was back.
    thread.join(60)
    assert "model" in result, result
    client.close()
    waiting.close()
    restarted.terminate()
    assert restarted.wait(30) == 0


@pytest.mark.slow
def test_connections_are_recycled_after_max_connection_age(start_server):
    """GOAWAY after --max-connection-age-ms: the client reconnects and no call fails."""
    server = start_server("--port", "0", "--max-connection-age-ms", "300").wait_serving()
    with AttentionClient(server.target, timeout=60) as client:
        model = client.compile(SMALL, backend="pytorch")
        for _ in range(12):
            assert dict(client.extract_attention(model))
            time.sleep(0.1)
    peers = set(re.findall(r"rpc=\w+ code=OK .* peer=(\S+)", server.log()))
    assert len(peers) > 1, f"one connection served every call: {peers}"
