"""The one exception tree of neural-attn; each class knows its gRPC status.

    NeuralAttnError
    ├── DSLError                    INVALID_ARGUMENT  a .neural file is wrong (line, column, caret)
    │   ├── DSLSyntaxError                            it does not parse
    │   └── DSLSemanticError                          it parses but means nothing buildable
    │       └── DSLLimitError       RESOURCE_EXHAUSTED   it expands past a limit (also a
    │                                                 ResourceLimitError)
    ├── InvalidInputError           INVALID_ARGUMENT  a tensor or request field is wrong
    ├── ModelNotFoundError          NOT_FOUND         unknown model_id (the SDK resends the source)
    ├── LayerNotFoundError          NOT_FOUND         a requested layer does not exist
    ├── NoAttentionLayersError      FAILED_PRECONDITION  the model has no attention layers
    ├── ResourceLimitError          RESOURCE_EXHAUSTED   a request is over a configured limit
    ├── BackendUnavailableError     UNIMPLEMENTED     the backend is not installed on the server
    ├── AuthenticationError         UNAUTHENTICATED
    ├── DeadlineExceededError       DEADLINE_EXCEEDED
    ├── CancelledError              CANCELLED
    ├── ServerUnavailableError      UNAVAILABLE       the client cannot reach a server
    └── InternalError               INTERNAL          a bug of ours; the message says so

This module imports nothing heavy: the thin client, the DSL and the server all share it.
Status codes are held as names (``"INVALID_ARGUMENT"``) so that no grpc import is needed here.

Messages stay small whatever the input: a message travels in the status details, which share
gRPC's 16 KiB metadata cap with the error kind, so every message is cut to
``MAX_MESSAGE_BYTES`` here, and what messages quote (source lines, names, reprs) is cut to an
``excerpt`` where it is written.
"""

from __future__ import annotations

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AuthenticationError",
    "BackendUnavailableError",
    "CancelledError",
    "DSLError",
    "DSLLimitError",
    "DSLSemanticError",
    "DSLSyntaxError",
    "DeadlineExceededError",
    "InternalError",
    "InvalidInputError",
    "LayerNotFoundError",
    "ModelNotFoundError",
    "NeuralAttnError",
    "NoAttentionLayersError",
    "ResourceLimitError",
    "ServerUnavailableError",
    "error_for_status",
    "excerpt",
]

# UTF-8 bytes of a message at most: percent-encoded in the grpc-message header, even a message
# of non-ASCII characters stays well under the 16 KiB metadata cap.
MAX_MESSAGE_BYTES = 2048
_EXCERPT_CHARS = 80


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def _bounded(message: str) -> str:
    data = message.encode("utf-8", "replace")
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    tail = f"... (message cut, {len(data):,} bytes in all)"
    keep = data[: MAX_MESSAGE_BYTES - len(tail)].decode("utf-8", "ignore")
    return keep + tail


class NeuralAttnError(Exception):
    """Base of every error neural-attn raises on purpose."""

    status_name = "UNKNOWN"

    def __init__(self, message: str) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class DSLError(NeuralAttnError):
    """A .neural file is wrong; carries where (file, line, column) and the offending line."""

    status_name = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        filename: str = "<string>",
        line: int | None = None,
        column: int | None = None,
        source_line: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = message
        self.filename = filename
        self.line = line
        self.column = column
        self.source_line = source_line
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = excerpt(self.filename, 200)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        # Each part is cut on its own, so that a long name quoted in the reason cannot push
        # the line and caret out of the message.
        text = f"{where}: {excerpt(self.reason, 600)}"
        if self.source_line is not None and self.line is not None:
            shown, caret = _line_window(self.source_line.rstrip(), self.column)
            gutter = f"{self.line:>4} | "
            text += f"\n{gutter}{shown}"
            if caret is not None:
                # Tabs keep their width so the caret lines up under the offending character.
                lead = "".join(c if c == "\t" else " " for c in shown[:caret])
                text += f"\n{' ' * (len(gutter) - 2)}| {lead}^"
        if self.hint:
            text += f"\n{excerpt(self.hint, 400)}"
        return text


_LINE_WINDOW = 100  # characters of a source line shown under a message
_BEFORE_CARET = 60  # of which before the caret, when the line is cut


def _line_window(line: str, column: int | None) -> tuple[str, int | None]:
    """The part of a source line to show, and the caret's index in it (None: no caret).

    A long line is cut around the column, with `...` where text was left out."""
    at = None if column is None else max(0, column - 1)
    if len(line) <= _LINE_WINDOW:
        return line, at
    start = 0 if at is None else max(0, min(at - _BEFORE_CARET, len(line) - _LINE_WINDOW))
    shown = line[start : start + _LINE_WINDOW]
    head = "..." if start else ""
    tail = "..." if start + _LINE_WINDOW < len(line) else ""
    return head + shown + tail, None if at is None else len(head) + at - start


class DSLSyntaxError(DSLError):
    """The text does not parse as Neural DSL."""


class DSLSemanticError(DSLError):
    """The text parses but does not describe a model we can build (shapes, parameters, ...)."""


class ResourceLimitError(NeuralAttnError):
    """The request is over a configured limit; refused before allocating."""

    status_name = "RESOURCE_EXHAUSTED"


class DSLLimitError(DSLSemanticError, ResourceLimitError):
    """The file expands past a configured limit (layers after `* N`, macros, num_layers)."""

    status_name = "RESOURCE_EXHAUSTED"


class InvalidInputError(NeuralAttnError):
    """A tensor, shape, dtype or request field is wrong; the message names what would work."""

    status_name = "INVALID_ARGUMENT"


class ModelNotFoundError(NeuralAttnError):
    """The server does not hold this model_id (another replica compiled it, or it was evicted)."""

    status_name = "NOT_FOUND"


class LayerNotFoundError(NeuralAttnError):
    """A requested layer name is not an attention layer of the model."""

    status_name = "NOT_FOUND"


class NoAttentionLayersError(NeuralAttnError):
    """The model has no attention layers, so there is nothing to extract."""

    status_name = "FAILED_PRECONDITION"


class BackendUnavailableError(NeuralAttnError):
    """The requested backend (or the server extras) is not installed where the work runs."""

    status_name = "UNIMPLEMENTED"


class AuthenticationError(NeuralAttnError):
    """The server wants credentials the caller did not give."""

    status_name = "UNAUTHENTICATED"


class DeadlineExceededError(NeuralAttnError):
    """The call ran past its deadline; the server stopped the work."""

    status_name = "DEADLINE_EXCEEDED"


class CancelledError(NeuralAttnError):
    """The call was cancelled; the server stopped the work."""

    status_name = "CANCELLED"


class ServerUnavailableError(NeuralAttnError):
    """No server answered at the address given."""

    status_name = "UNAVAILABLE"


class InternalError(NeuralAttnError):
    """Something failed that should not have: a bug of ours."""

    status_name = "INTERNAL"


# A fixed table from status back to class: the client never imports a name the server sends.
_BY_STATUS: dict[str, type[NeuralAttnError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "NOT_FOUND": ModelNotFoundError,
    "FAILED_PRECONDITION": NoAttentionLayersError,
    "RESOURCE_EXHAUSTED": ResourceLimitError,
    "UNIMPLEMENTED": BackendUnavailableError,
    "UNAUTHENTICATED": AuthenticationError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "CANCELLED": CancelledError,
    "UNAVAILABLE": ServerUnavailableError,
}

# Trailing-metadata key the server sets so the client can tell two errors of one status apart.
ERROR_KIND_KEY = "neural-attn-error"
_BY_KIND: dict[str, type[NeuralAttnError]] = {
    cls.__name__: cls
    for cls in (
        DSLSyntaxError,
        DSLSemanticError,
        DSLLimitError,
        DSLError,
        LayerNotFoundError,
        ModelNotFoundError,
    )
}


def error_for_status(status_name: str, message: str, kind: str | None = None) -> NeuralAttnError:
    """Turn a status name (and the optional error kind the server attached) into our exception."""
    cls = _BY_KIND.get(kind or "") or _BY_STATUS.get(status_name, InternalError)
    if issubclass(cls, DSLError):
        # The message already holds file, line, column and caret as the server rendered them.
        err = cls.__new__(cls)
        NeuralAttnError.__init__(err, message)
        err.reason, err.filename, err.line, err.column = message, "<remote>", None, None
        err.source_line, err.hint = None, None
        return err
    return cls(message)
