"""One interceptor around every AttentionService call: admission, errors, and what it shows.

- Admission: while draining, new calls are refused with UNAVAILABLE (the SDK's retry policy sends
  them elsewhere); without the bearer token, UNAUTHENTICATED (constant-time comparison); beyond
  the server's capacity (`max_workers` calls at work, GetServerInfo aside), RESOURCE_EXHAUSTED at
  once with a retry hint, never a queue: the pool keeps threads beyond the capacity, so health,
  reflection and GetServerInfo are answered whatever the other calls do.
- Idle streams: a call that has waited on its client (a response the client does not read, a
  request it does not send) for longer than `stream_idle_s` is cancelled (CANCELLED), which
  frees its worker; time the server spends working never counts.
- Errors: servicer methods raise `NeuralAttnError`s and never touch `context.abort` themselves;
  any other exception is a bug of ours and becomes INTERNAL with a message that says so (the
  traceback is logged here, never sent).
- What it shows: the request id (the client's `x-request-id` or a fresh one) goes back in
  trailing metadata, every call is counted in the metrics and ends in one log line.

Health and reflection are left alone, so probes work without a token and during a drain.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from neural_attn.chunk_codec import pass_serialized
from neural_attn.errors import (
    ERROR_KIND_KEY,
    AuthenticationError,
    NeuralAttnError,
    ResourceLimitError,
    ServerUnavailableError,
)
from neural_attn.server.observability import (
    REQUEST_ID_KEY,
    Call,
    CallRegistry,
    Metrics,
    log_call,
    request_id_from,
)

log = logging.getLogger("neural_attn.server")

_OURS = "/neural_attn.v1."
_LIGHT = frozenset({"GetServerInfo"})  # answered at once: never counted against the capacity
RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata of a refusal for lack of capacity
RETRY_AFTER_MS = 1000


class ServiceInterceptor(grpc.ServerInterceptor):
    """Admission, error statuses, request ids, metrics and request logs for our service."""

    def __init__(
        self,
        auth_token: str | None = None,
        *,
        metrics: Metrics | None = None,
        calls: CallRegistry | None = None,
        capacity: int = 0,
        stream_idle_s: float = 0.0,
    ) -> None:
        self._token = auth_token
        self.metrics = metrics if metrics is not None else Metrics()
        self.calls = calls if calls is not None else CallRegistry()
        self.draining = threading.Event()
        self.capacity = capacity  # 0: no limit
        self._slots = threading.BoundedSemaphore(capacity) if capacity > 0 else None
        self.stream_idle_s = stream_idle_s
        if stream_idle_s > 0:
            threading.Thread(target=self._watch_idle, name="idle-watchdog", daemon=True).start()

    def _take_slot(self, call: Call) -> None:
        if self._slots is None or call.method in _LIGHT:
            return
        if not self._slots.acquire(blocking=False):
            call.busy = True
            raise ResourceLimitError(
                f"the server is busy: all {self.capacity} of its workers are serving calls; "
                f"retry in about {RETRY_AFTER_MS / 1000:g} s (trailing metadata "
                f"{RETRY_AFTER_KEY}), or at another replica"
            )
        call.holds_slot = True

    def _watch_idle(self) -> None:
        """Cancel calls that have waited on their client for longer than the idle limit."""
        period = min(1.0, self.stream_idle_s / 4)
        while True:
            time.sleep(period)
            now = time.monotonic()
            for call in self.calls.snapshot():
                since = call.waiting_since
                if since is not None and now - since > self.stream_idle_s and call.context:
                    call.idle_cut = True
                    call.context.cancel()

    def _admit(self, metadata: Any) -> None:
        if self.draining.is_set():
            raise ServerUnavailableError(
                "this server is shutting down (draining after SIGTERM); retry: another replica "
                "or the restarted server will answer"
            )
        if not self._token:
            return
        given = ""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                given = value
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            raise AuthenticationError(
                "this server needs a token: send metadata 'authorization: Bearer <token>' "
                "(client: --token-file, NEURAL_ATTN_TOKEN or the SDK's token=)"
            )

    def _begin(self, method: str, request: Any, context: grpc.ServicerContext) -> tuple[Call, Any]:
        """The call's record, and its request: a message, counted now, or a client stream's
        iterator, whose messages are counted (and their waits timed) as they come."""
        metadata = context.invocation_metadata()
        call = Call(method, request_id_from(metadata), context.peer())
        call.context = context
        if hasattr(request, "ByteSize"):
            call.received_bytes = request.ByteSize()
        else:
            request = self._requests(request, call)
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        self.calls.add(call)
        self.metrics.in_flight.labels(method).inc()
        return call, request

    def _admitted(self, call: Call, context: grpc.ServicerContext) -> None:
        self._admit(context.invocation_metadata())
        self._take_slot(call)

    def _end(self, call: Call, context: grpc.ServicerContext) -> None:
        if call.holds_slot:
            assert self._slots is not None
            self._slots.release()
            call.holds_slot = False
        if call.idle_cut:
            call.code, call.error_kind = "CANCELLED", "IdleStream"
        elif call.code == "OK" and not context.is_active():
            remaining = context.time_remaining()
            call.code = (
                "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            )
        call.context = None
        m = self.metrics
        m.in_flight.labels(call.method).dec()
        m.requests.labels(call.method, call.code).inc()
        m.latency.labels(call.method).observe(call.age())
        m.received_bytes.labels(call.method).inc(call.received_bytes)
        m.sent_bytes.labels(call.method).inc(call.sent_bytes)
        m.sent_messages.labels(call.method).inc(call.sent_messages)
        self.calls.remove(call)
        log_call(call)

    def _abort(self, context: grpc.ServicerContext, exc: Exception, call: Call) -> None:
        if call.idle_cut or (isinstance(exc, grpc.RpcError) and not context.is_active()):
            return  # the call was cancelled (by its client or the idle watchdog): it is over
        if not isinstance(exc, NeuralAttnError):
            if context.code() is not None:
                raise exc  # context.abort was already called; its status stands
            log.exception("internal error while serving request %s", call.request_id)
            exc_kind, status, message = (
                "",
                grpc.StatusCode.INTERNAL,
                f"internal error in neural-attn ({type(exc).__name__}: {str(exc)[:300]}); this "
                f"is a bug, the server log has the traceback (request id {call.request_id})",
            )
        else:
            exc_kind = type(exc).__name__
            status = getattr(grpc.StatusCode, exc.status_name)
            message = exc.message
        call.code, call.error_kind = status.name, exc_kind
        trailing = [(REQUEST_ID_KEY, call.request_id)]
        if exc_kind:
            trailing.append((ERROR_KIND_KEY, exc_kind))
        if call.busy:
            trailing.append((RETRY_AFTER_KEY, str(RETRY_AFTER_MS)))
        context.set_trailing_metadata(tuple(trailing))
        context.abort(status, message)

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            call, request = self._begin(method, request, context)
            try:
                self._admitted(call, context)
                response = behavior(request, context)
                call.sent_messages, call.sent_bytes = 1, response.ByteSize()
                return response
            except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
                self._abort(context, exc, call)
            finally:
                self._end(call, context)

        return wrapped

    def _stream(
        self, method: str, behavior: Callable[..., Iterator[Any]]
    ) -> Callable[..., Iterator[Any]]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call, request = self._begin(method, request, context)
            try:
                self._admitted(call, context)
                for message in behavior(request, context):
                    call.sent_messages += 1
                    call.sent_bytes += message.ByteSize()
                    call.waiting_since = time.monotonic()  # until the client takes it
                    yield message
                    call.waiting_since = None
            except Exception as exc:  # noqa: BLE001
                self._abort(context, exc, call)
            finally:
                self._end(call, context)

        return wrapped

    @staticmethod
    def _requests(requests: Iterator[Any], call: Call) -> Iterator[Any]:
        """A client stream's messages, counted, the wait for each one timed for the watchdog."""
        while True:
            call.waiting_since = time.monotonic()
            try:
                message = next(requests)
            except StopIteration:
                return
            finally:
                call.waiting_since = None
            call.received_bytes += message.ByteSize()
            yield message

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_OURS):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(method, handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary(method, handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(
                unary_stream=self._stream(method, handler.unary_stream),
                # ExtractAttention's chunks come already serialized (chunk_codec).
                response_serializer=pass_serialized(handler.response_serializer),
            )
        if handler.stream_stream:  # ProfileHeads: the request is an iterator of messages
            return handler._replace(stream_stream=self._stream(method, handler.stream_stream))
        return handler
