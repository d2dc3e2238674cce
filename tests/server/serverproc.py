"""Helpers for tests of the installed `neural-attn-server` command, run as operators run it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVER_BIN = Path(sys.executable).with_name("neural-attn-server")
SMALL = """
network Small {
  input: (10, 16)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=32) * 2
}
"""
_SERVING = re.compile(r"AttentionService on (\S+):(\d+)")
_METRICS = re.compile(r"metrics on (http://\S+/metrics)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One `neural-attn-server` process; its log goes to a file the test can read."""

    def __init__(self, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.args = args
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in wait()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("NEURAL_ATTN_")}
        self.proc = subprocess.Popen(
            [str(SERVER_BIN), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**environ, **(env or {})},
        )
        self.port = 0
        self.metrics_url = ""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_started(self, timeout: float = 60) -> ServerProcess:
        """Until the log says where it serves (port 0 is allowed); fails if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            found = _SERVING.search(text)
            if found:
                self.port = int(found.group(2))
                metrics = _METRICS.search(text)
                self.metrics_url = metrics.group(1) if metrics else ""
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"neural-attn-server exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        pytest.fail(f"neural-attn-server did not start within {timeout} s:\n{self.log()}")

    def wait_serving(
        self, credentials: grpc.ChannelCredentials | None = None, timeout: float = 60
    ) -> ServerProcess:
        """Until the standard health service answers SERVING."""
        self.wait_started(timeout)
        channel = (
            grpc.secure_channel(self.target, credentials)
            if credentials
            else grpc.insecure_channel(self.target)
        )
        with channel:
            status = health_status(channel, timeout=timeout)
        assert status == health_pb2.HealthCheckResponse.SERVING, self.log()
        return self

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:
            return reply.read().decode()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()


def health_status(channel: grpc.Channel, *, timeout: float = 30, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    return int(stub.Check(request, timeout=timeout, wait_for_ready=True).status)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample == name and got == want:
            return float(value)
    return 0.0
