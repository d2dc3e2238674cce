"""One interceptor turns our errors into gRPC statuses and checks the bearer token.

Servicer methods raise `NeuralAttnError`s and never touch `context.abort` themselves; any other
exception is a bug of ours and becomes INTERNAL with a message that says so (the traceback is
logged here, never sent). Health and reflection are left alone so probes work without a token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from neural_attn.errors import ERROR_KIND_KEY, NeuralAttnError

log = logging.getLogger("neural_attn.server")

_OURS = "/neural_attn.v1."


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, NeuralAttnError):
        context.set_trailing_metadata(((ERROR_KIND_KEY, type(exc).__name__),))
        context.abort(getattr(grpc.StatusCode, exc.status_name), exc.message)
    log.exception("internal error while serving a request")
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in neural-attn ({type(exc).__name__}: {exc}); this is a bug, "
        "the server log has the traceback",
    )


def _guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
            _abort(context, exc)

    return wrapped


def _guard_stream(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:  # noqa: BLE001
            _abort(context, exc)

    return wrapped


class ServiceInterceptor(grpc.ServerInterceptor):
    def __init__(self, auth_token: str | None = None) -> None:
        self._token = auth_token

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        if not self._token:
            return True
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("authorization", ""))
        return hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode())

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_OURS):
            return handler
        if not self._authorized(handler_call_details):

            def deny(request: Any, context: grpc.ServicerContext) -> Any:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs a token: send metadata 'authorization: Bearer <token>' "
                    "(client: --token or NEURAL_ATTN_TOKEN)",
                )

            if handler.unary_stream:
                return grpc.unary_stream_rpc_method_handler(
                    deny, handler.request_deserializer, handler.response_serializer
                )
            return grpc.unary_unary_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_unary:
            return handler._replace(unary_unary=_guard_unary(handler.unary_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=_guard_stream(handler.unary_stream))
        return handler
