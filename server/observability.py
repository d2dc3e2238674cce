"""What the server shows about itself: Prometheus metrics, one log line per request, request ids.

Each server owns its own `CollectorRegistry`, so several servers in one process (tests, the
embedded server beside a real one) never mix their numbers. `serve_metrics` exposes it over HTTP.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID = 128
_REQUEST_ID_OK = re.compile(r"[^A-Za-z0-9._:/+=@-]")

request_log = logging.getLogger("neural_attn.server.requests")

# From a cached GetServerInfo (ms) to a long sequence's forward pass and stream (minutes).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


def request_id_from(metadata: Any) -> str:
    """The client's `x-request-id` (cut and made printable) or a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            cleaned = _REQUEST_ID_OK.sub("_", value[:_MAX_REQUEST_ID])
            if cleaned:
                return cleaned
    return uuid.uuid4().hex


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "neural_attn_requests",
            "Finished calls by RPC and gRPC status code",
            ("method", "code"),
            registry=r,
        )
        self.latency = Histogram(
            "neural_attn_request_duration_seconds",
            "Time from a call's arrival to its last message, by RPC",
            ("method",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.received_bytes = Counter(
            "neural_attn_request_bytes",
            "Serialized bytes of the requests received, by RPC",
            ("method",),
            registry=r,
        )
        self.sent_bytes = Counter(
            "neural_attn_response_bytes",
            "Serialized bytes sent (streamed chunks included), by RPC",
            ("method",),
            registry=r,
        )
        self.sent_messages = Counter(
            "neural_attn_response_messages",
            "Messages sent (attention chunks for ExtractAttention), by RPC",
            ("method",),
            registry=r,
        )
        self.in_flight = Gauge(
            "neural_attn_in_flight_requests",
            "Calls being served now (ExtractAttention: open streams), by RPC",
            ("method",),
            registry=r,
        )
        self.cache_hits = Counter(
            "neural_attn_cache_hits", "Model cache lookups that found the model", registry=r
        )
        self.cache_misses = Counter(
            "neural_attn_cache_misses",
            "Model cache lookups that did not (a build, or NOT_FOUND for a model_id)",
            registry=r,
        )
        self.cache_models = Gauge(
            "neural_attn_cache_models", "Models held in the model cache", registry=r
        )
        self.cache_bytes = Gauge(
            "neural_attn_cache_bytes",
            "Bytes the model cache accounts for its models (0 when it does not count bytes)",
            registry=r,
        )
        self.draining = Gauge(
            "neural_attn_draining", "1 while the server drains after SIGTERM", registry=r
        )

    def watch_cache(self, cache: Any) -> Any:
        """Count hits and misses of `cache` and read its size at scrape time; returns the proxy."""
        self.cache_models.set_function(lambda: float(len(cache)))
        self.cache_bytes.set_function(lambda: float(_cache_bytes(cache)))
        return _CountingCache(cache, self)


def _cache_bytes(cache: Any) -> int:
    # The cache may learn to count bytes; read whichever name it uses, if any.
    for name in ("total_bytes", "nbytes", "bytes_used", "size_bytes"):
        value = getattr(cache, name, None)
        if callable(value):
            value = value()
        if isinstance(value, int):
            return value
    return 0


class _CountingCache:
    """A transparent proxy that counts `get`/`get_or_build` outcomes of the model cache."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def get(self, key: str) -> Any:
        item = self._inner.get(key)
        (self._metrics.cache_hits if item is not None else self._metrics.cache_misses).inc()
        return item

    def get_or_build(self, key: str, build: Callable[[], Any]) -> Any:
        result = self._inner.get_or_build(key, build)
        cached = bool(result[1]) if isinstance(result, tuple) and len(result) == 2 else False
        (self._metrics.cache_hits if cached else self._metrics.cache_misses).inc()
        return result

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def serve_metrics(metrics: Metrics, *, host: str, port: int) -> int:
    """Expose `metrics` at http://host:port/metrics (port 0: any free port); returns the port."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return int(server.server_address[1])


@dataclass
class Call:
    """One call being served: what the request log line and the drain report say about it."""

    method: str
    request_id: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    received_bytes: int = 0
    sent_bytes: int = 0
    sent_messages: int = 0
    code: str = "OK"
    error_kind: str = ""
    # Since when the call has been waiting on its client (a response it cannot send, a request
    # that has not come); None while the server works. The idle watchdog reads it.
    waiting_since: float | None = None
    holds_slot: bool = False  # admitted against the server's capacity (released at the end)
    idle_cut: bool = False  # cancelled by the idle watchdog
    busy: bool = False  # refused for lack of capacity
    context: Any = None  # the call's grpc.ServicerContext while it runs

    def age(self) -> float:
        return time.monotonic() - self.started


class CallRegistry:
    """The calls in flight, so a drain knows what it waits for and what it had to cut."""

    def __init__(self) -> None:
        self._calls: dict[int, Call] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def add(self, call: Call) -> None:
        with self._lock:
            self._calls[id(call)] = call

    def remove(self, call: Call) -> None:
        with self._lock:
            self._calls.pop(id(call), None)
            if not self._calls:
                self._idle.notify_all()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self._calls.values())

    def wait_idle(self, timeout: float, give_up: Callable[[], bool] | None = None) -> bool:
        """True once no call is in flight; False when `timeout` s pass or `give_up()` first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._calls:
                left = deadline - time.monotonic()
                if left <= 0 or (give_up is not None and give_up()):
                    return False
                self._idle.wait(min(left, 0.2))  # short: give_up is polled
            return True


def log_call(call: Call) -> None:
    """The one log line of a finished call (fields also as `extra`, for the JSON formatter)."""
    fields = {
        "request_id": call.request_id,
        "rpc": call.method,
        "code": call.code,
        "duration_ms": round(call.age() * 1000, 1),
        "request_bytes": call.received_bytes,
        "response_bytes": call.sent_bytes,
        "messages": call.sent_messages,
        "peer": call.peer,
    }
    if call.error_kind:
        fields["error_kind"] = call.error_kind
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    level = logging.WARNING if call.code in ("INTERNAL", "UNKNOWN") else logging.INFO
    request_log.log(level, "request %s", text, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and a request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out["event"] = "request"
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(log_format: str, level: str = "INFO") -> None:
    """Root logging to stderr as text lines or JSON lines (`--log-format`)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
