"""One interceptor around every AttentionService call: admission, errors, and what it shows.

- Admission: while draining, new calls are refused with UNAVAILABLE (the SDK's retry policy sends
  them elsewhere); without the bearer token, UNAUTHENTICATED (constant-time comparison).
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
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from neural_attn.chunk_codec import pass_serialized
from neural_attn.errors import (
    ERROR_KIND_KEY,
    AuthenticationError,
    NeuralAttnError,
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


class ServiceInterceptor(grpc.ServerInterceptor):
    """Admission, error statuses, request ids, metrics and request logs for our service."""

    def __init__(
        self,
        auth_token: str | None = None,
        *,
        metrics: Metrics | None = None,
        calls: CallRegistry | None = None,
    ) -> None:
        self._token = auth_token
        self.metrics = metrics if metrics is not None else Metrics()
        self.calls = calls if calls is not None else CallRegistry()
        self.draining = threading.Event()

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

    def _begin(self, method: str, request: Any, context: grpc.ServicerContext) -> Call:
        metadata = context.invocation_metadata()
        call = Call(method, request_id_from(metadata), context.peer())
        call.received_bytes = request.ByteSize() if hasattr(request, "ByteSize") else 0
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        self.calls.add(call)
        self.metrics.in_flight.labels(method).inc()
        return call

    def _end(self, call: Call, context: grpc.ServicerContext) -> None:
        if call.code == "OK" and not context.is_active():
            remaining = context.time_remaining()
            call.code = (
                "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            )
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
        context.set_trailing_metadata(tuple(trailing))
        context.abort(status, message)

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            call = self._begin(method, request, context)
            try:
                self._admit(context.invocation_metadata())
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
            call = self._begin(method, request, context)
            try:
                self._admit(context.invocation_metadata())
                for message in behavior(request, context):
                    call.sent_messages += 1
                    call.sent_bytes += message.ByteSize()
                    yield message
            except Exception as exc:  # noqa: BLE001
                self._abort(context, exc, call)
            finally:
                self._end(call, context)

        return wrapped

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_OURS):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(method, handler.unary_unary))
        if handler.unary_stream:
            return handler._replace(
                unary_stream=self._stream(method, handler.unary_stream),
                # ExtractAttention's chunks come already serialized (chunk_codec).
                response_serializer=pass_serialized(handler.response_serializer),
            )
        if handler.stream_stream:  # ProfileHeads: the request is an iterator of messages
            return handler._replace(stream_stream=self._stream(method, handler.stream_stream))
        return handler
