"""Stateless replicas behind client-side round-robin: three real servers, one killed mid-run."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from serverproc import SMALL, metric

from neural_attn.client import AttentionClient

pytestmark = pytest.mark.slow
JOBS = 90
KILL_AFTER = 30


def _ok_calls(log: str) -> int:
    return len(re.findall(r"rpc=\w+ code=OK", log))


def test_round_robin_spreads_calls_and_a_killed_replica_loses_none(start_server):
    replicas = [start_server("--port", "0", "--metrics-port", "0") for _ in range(3)]
    for replica in replicas:
        replica.wait_serving()
    target = ",".join(r.target for r in replicas)

    done = 0
    lock = threading.Lock()
    killed = threading.Event()
    before_kill: list[float] = []

    def job(i: int, client: AttentionClient) -> tuple[int, object]:
        nonlocal done
        # Models differ by seed: a replica that has not built one answers NOT_FOUND to its
        # model_id and the SDK resends the source (replicas are stateless).
        model = client.compile(SMALL, backend="pytorch", seed=i % 5)
        if i % 3 == 2:
            result: object = sorted(client.analyze(model=model)["layers"])
        else:
            result = {name: a.shape for name, a in client.extract_attention(model)}
        with lock:
            done += 1
            if done == KILL_AFTER:
                before_kill.extend(
                    metric(r.metrics(), "neural_attn_requests_total", method="Compile", code="OK")
                    for r in replicas
                )
                replicas[1].proc.kill()  # SIGKILL: no drain, calls on it die with it
                killed.set()
        return i, result

    with AttentionClient(target, timeout=120) as client:
        with ThreadPoolExecutor(6) as pool:
            results = dict(pool.map(lambda i: job(i, client), range(JOBS)))

    assert killed.is_set()
    layers = ["transformer_encoder_0", "transformer_encoder_1"]
    shape = (1, 4, 10, 10)
    for i in range(JOBS):
        expected = layers if i % 3 == 2 else dict.fromkeys(layers, shape)
        assert results[i] == expected, f"job {i}: {results[i]}"
    served = [_ok_calls(r.log()) for r in replicas]
    assert all(n > 0 for n in served), f"a replica served nothing: {served}"
    assert all(n > 0 for n in before_kill), f"Compile calls before the kill: {before_kill}"
    for index in (0, 2):  # the survivors took the calls after the kill
        after = metric(
            replicas[index].metrics(), "neural_attn_requests_total", method="Compile", code="OK"
        )
        assert after > before_kill[index]
    print(f"OK calls per replica {served}; Compile calls before the kill {before_kill}")


# 16 MiB of attention per layer: the stream is still being sent when its first chunk arrives.
BIG = """
network Big {
  input: (1024, 8)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=8) * 2
}
"""


@pytest.mark.parametrize("cut_layer", ["transformer_encoder_0", "transformer_encoder_1"])
def test_a_stream_cut_mid_layer_by_a_dying_replica_is_asked_again(
    start_server, monkeypatch, cut_layer
):
    """Cut in the first layer, or after the first was handed out: each layer arrives once."""
    from neural_attn.client import _client

    replicas = [start_server("--port", "0", "--metrics-port", "0") for _ in range(2)]
    for replica in replicas:
        replica.wait_serving()
    killed = []

    class KillingSink(_client.ArraySink):
        """Kills the replica serving the stream when the stream's first chunk arrives."""

        def begin(self, header):
            self.layer = header.name
            super().begin(header)

        def write(self, offset, values):
            if not killed and self.layer == cut_layer:
                serving = [
                    r
                    for r in replicas
                    if metric(
                        r.metrics(), "neural_attn_in_flight_requests", method="ExtractAttention"
                    )
                    == 1
                ]
                assert len(serving) == 1, "the stream was not in flight on one replica"
                serving[0].proc.kill()
                serving[0].proc.wait(30)
                killed.append(serving[0])
            super().write(offset, values)

    monkeypatch.setattr(_client, "ArraySink", KillingSink)
    with AttentionClient(",".join(r.target for r in replicas), timeout=120) as client:
        model = client.compile(BIG, backend="pytorch")
        handed_out = [(name, a.shape) for name, a in client.extract_attention(model)]
    assert killed
    assert dict(handed_out) == dict.fromkeys(
        ["transformer_encoder_0", "transformer_encoder_1"], (1, 4, 1024, 1024)
    )
    assert [name for name, _ in handed_out] == ["transformer_encoder_0", "transformer_encoder_1"]
    (survivor,) = [r for r in replicas if r is not killed[0]]
    assert "rpc=ExtractAttention code=OK" in survivor.log()
