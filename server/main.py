"""`neural-attn-server`: run the gRPC service until SIGTERM, then drain.

Every setting is a flag and a `NEURAL_ATTN_*` environment variable, derived from the fields of
`ServerConfig` (what the server does) and `RunOptions` (how this process runs it), so a field
added there is settable here without more code. Flags win over the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import signal
import sys
import threading
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neural_attn.server.config import ServerConfig

log = logging.getLogger("neural_attn.server")

EXIT_CUT = 3  # the grace ran out and calls were cut


@dataclass(frozen=True)
class RunOptions:
    """How this process runs the server; `ServerConfig` says what the server does."""

    host: str | None = None  # None: loopback, or every interface when a token or TLS is set
    port: int = 50051
    grace: float = 30.0  # seconds in-flight calls get to finish after SIGTERM
    metrics_port: int | None = None  # Prometheus /metrics on HTTP; None: off, 0: any free port
    metrics_host: str | None = None  # None: --host when given, else loopback
    log_format: str = "text"  # text | json (one object per line)
    log_level: str = "INFO"


@dataclass(frozen=True)
class Setting:
    """One field of `ServerConfig` or `RunOptions` as the command line and environment see it."""

    field: str
    owner: type
    flags: tuple[str, ...]
    env: str
    kind: Any  # the field's type
    help: str
    choices: tuple[str, ...] | None = None


_HELP = {
    "default_backend": "backend for requests that name none",
    "device": "where models run",
    "max_message_bytes": "largest request or reply (inline weights files are large)",
    "max_source_bytes": "largest .neural source",
    "max_input_elements": "elements of one input tensor",
    "max_sequence_length": "longest sequence a request may run",
    "tile_elements": "attention scores a layer computes at once (batch x heads x query rows x "
    "keys); a longer layer is computed in tiles of query rows. 0: the backend's own (4194304 "
    "for PyTorch, 16777216 for TensorFlow)",
    "max_attention_elements": "attention values one request may hold at once (one tile and the "
    "reduced layer when extracting; a whole layer for the head analyses)",
    "max_activation_elements": "elements of the largest tensor of a forward pass",
    "default_chunk_bytes": "attention chunk size when a request names none",
    "max_chunk_bytes": "largest attention chunk a request may ask for",
    "min_chunk_bytes": "smallest attention chunk a request may ask for",
    "max_cached_models": "models kept in the LRU model cache",
    "max_cache_bytes": "bytes of model parameters the LRU model cache keeps",
    "max_parameters": "a model over this many parameters is refused before it is built",
    "max_layers": "a model over this many layers is refused",
    "max_analysis_heads": "heads one AnalyzeHeads, AblateHeads, ProfileHeads or "
    "CompareCheckpoints call reads",
    "max_similarity_heads": "heads one HeadSimilarity compares (its pairs grow with the square)",
    "max_similarity_values": "HeadSimilarity's work: pairs of heads x values per head",
    "max_held_attention_elements": "attention values a call holds at once when it needs every "
    "layer together (HeadSimilarity, CompareCheckpoints)",
    "max_profile_items": "samples one ProfileHeads stream profiles",
    "weights_dir": "directory whose files requests may name as weights (default: none)",
    "max_weights_bytes": "largest weights file",
    "max_workers": "threads serving calls",
    "auth_token": "file holding the bearer token calls must send (or $NEURAL_ATTN_TOKEN)",
    "tls_cert": "PEM certificate chain: serve TLS (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA: require client certificates it signed (mutual TLS)",
    "max_connection_age_ms": "close connections after this long so clients rebalance (0: never)",
    "host": "address to bind (default: 127.0.0.1; 0.0.0.0 when a token or TLS is configured)",
    "port": "gRPC port (0: any free port)",
    "grace": "seconds in-flight calls get to finish after SIGTERM before they are cut",
    "metrics_port": "serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    "metrics_host": "address of the metrics endpoint (default: the --host address when given, "
    "else loopback)",
    "log_format": "text lines, or one JSON object per line",
    "log_level": "least severe log level written",
}
_CHOICES = {
    "default_backend": ("tensorflow", "pytorch"),
    "device": ("auto", "cpu", "cuda"),
    "log_format": ("text", "json"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
}
# The token is a secret: never a flag value (it would show in `ps`), a file or the environment.
_FLAGS = {"default_backend": ("--backend", "--default-backend"), "auth_token": ("--token-file",)}
_ENV = {"auth_token": "NEURAL_ATTN_TOKEN"}
TOKEN_FILE_ENV = "NEURAL_ATTN_TOKEN_FILE"


def settings() -> list[Setting]:
    """Every settable field, with its flags and environment variable."""
    out = []
    # Imported here: the config pulls in the DSL (lark), and without the server extras this
    # module must still load to say what to install.
    from neural_attn.server.config import ServerConfig

    for owner in (ServerConfig, RunOptions):
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            out.append(
                Setting(
                    field=f.name,
                    owner=owner,
                    flags=_FLAGS.get(f.name, ("--" + f.name.replace("_", "-"),)),
                    env=_ENV.get(f.name, "NEURAL_ATTN_" + f.name.upper()),
                    kind=hints[f.name],
                    help=_HELP.get(f.name, f"{owner.__name__}.{f.name}"),
                    choices=_CHOICES.get(f.name),
                )
            )
    return out


_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _int(text: str) -> int:
    """An int; `_` separators and binary size suffixes allowed (64MiB, 2G, 512k)."""
    t = text.strip().replace("_", "").lower().removesuffix("ib").removesuffix("b")
    scale = 1
    if t and t[-1] in _UNITS:
        t, scale = t[:-1], _UNITS[t[-1]]
    return int(t) * scale


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(kind: Any) -> Callable[[str], Any]:
    """The parse function of a field type ("none" gives None where the type allows it)."""
    optional = False
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    table: dict[Any, Callable[[str], Any]] = {int: _int, float: float, bool: _bool}
    base = table.get(kind, str)
    if not optional:
        return base

    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("", "none") else base(text)

    return parse


def _parse(s: Setting) -> Callable[[str], Any]:
    """The text-to-value function of a setting; choices match whatever the case (`debug`)."""
    parse = _converter(s.kind)
    if not s.choices:
        return parse
    spelled = {choice.lower(): choice for choice in s.choices}
    return lambda text: spelled.get(text.strip().lower(), text)


def _metavar(s: Setting) -> str:
    if s.field.endswith(("_dir", "_cert", "_key", "_ca", "_file")):
        return "PATH"
    names = {int: "N", float: "SECONDS", bool: "BOOL"}
    args = typing.get_args(s.kind) or (s.kind,)
    return next((names[a] for a in args if a in names), "TEXT")


def _default(s: Setting) -> Any:
    value = next(f.default for f in dataclasses.fields(s.owner) if f.name == s.field)
    return "none" if value is None else value


def _parser(items: list[Setting]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neural-attn-server",
        description=(__doc__ or "").split("\n")[0],
        epilog="Each flag has an environment variable NEURAL_ATTN_<FIELD>, e.g. "
        "NEURAL_ATTN_MAX_WORKERS=16; the token: NEURAL_ATTN_TOKEN or NEURAL_ATTN_TOKEN_FILE. "
        "Sizes take suffixes (64MiB, 2G).",
    )
    for s in items:
        if s.field == "auth_token":
            p.add_argument(
                *s.flags, dest="token_file", metavar="PATH", default=argparse.SUPPRESS, help=s.help
            )
            continue
        p.add_argument(
            *s.flags,
            dest=s.field,
            type=_parse(s),
            choices=s.choices,
            default=argparse.SUPPRESS,
            metavar=None if s.choices else _metavar(s),
            help=f"{s.help} (${s.env})"
            if "default:" in s.help
            else f"{s.help} (${s.env}; default: {_default(s)})",
        )
    p.add_argument(
        "--token",
        dest="auth_token",
        default=argparse.SUPPRESS,
        help="deprecated: the token shows in `ps` to every user; use --token-file",
    )
    return p


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SystemExit(f"neural-attn-server: cannot read token file {path}: {exc}") from None
    if not token:
        raise SystemExit(f"neural-attn-server: token file {path} is empty")
    return token


def parse_settings(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[ServerConfig, RunOptions, list[str]]:
    """The server's config and run options from defaults, then environment, then flags.

    Returns also the notes to log once logging is set up (never the token itself).
    """
    environ = os.environ if environ is None else environ
    items = settings()
    parser = _parser(items)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    notes: list[str] = []
    for s in items:
        if s.field == "auth_token":
            continue
        parse = _parse(s)
        if s.field in args:
            values[s.field] = args[s.field]
        elif s.env in environ:
            try:
                value = parse(environ[s.env])
            except ValueError as exc:
                parser.error(f"${s.env}={environ[s.env]!r}: {exc}")
            if s.choices and value not in s.choices:
                parser.error(f"${s.env} must be one of {', '.join(s.choices)}")
            values[s.field] = value
    if "auth_token" in args:
        notes.append("--token shows in `ps` to every user of this machine; use --token-file")
        token: str | None = args["auth_token"] or None
    elif "token_file" in args:
        token = _read_token(args["token_file"])
    elif environ.get("NEURAL_ATTN_TOKEN"):
        token = environ["NEURAL_ATTN_TOKEN"].strip()
    elif environ.get(TOKEN_FILE_ENV):
        token = _read_token(environ[TOKEN_FILE_ENV])
    else:
        token = None
    from neural_attn.server.config import ServerConfig

    names = {f.name for f in dataclasses.fields(ServerConfig)}
    config = ServerConfig(
        **{k: v for k, v in values.items() if k in names}, auth_token=token or None
    )
    run = RunOptions(**{k: v for k, v in values.items() if k not in names})
    return config, run, notes


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def choose_host(config: ServerConfig, run: RunOptions) -> tuple[str, list[str]]:
    """The address to bind and what to warn about: secure by default."""
    tls = bool(config.tls_cert)
    mtls = tls and bool(config.tls_client_ca)
    authenticated = bool(config.auth_token) or mtls
    host = run.host
    if host is None:
        if not (authenticated or tls):
            return "127.0.0.1", [
                "listening on loopback only (127.0.0.1): no token and no TLS are configured. To "
                "serve other hosts set a token (--token-file FILE or NEURAL_ATTN_TOKEN) and TLS "
                "(--tls-cert/--tls-key), or pass --host 0.0.0.0 to insist"
            ]
        host = "0.0.0.0"
    if _is_loopback(host):
        return host, []
    if not authenticated:
        return host, [
            "!" * 78,
            f"!!! UNPROTECTED: listening on {host} with NO TOKEN"
            + ("" if tls else " and NO TLS")
            + ": anyone who can reach this port can run models on this machine.",
            "!!! Set --token-file FILE (or NEURAL_ATTN_TOKEN), or --tls-client-ca for mTLS.",
            "!" * 78,
        ]
    if not tls:
        return host, [
            f"listening on {host} without TLS: the bearer token travels in clear text; "
            "add --tls-cert and --tls-key"
        ]
    return host, []


class _Stopper:
    """SIGTERM/SIGINT: the first starts the drain, a second cuts it short.

    The handler only sets events (logging from a signal handler can deadlock on its lock).
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self.signal_name = ""

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.stop.is_set():
            self.hurry.set()
        else:
            self.signal_name = signal.Signals(signum).name
            self.stop.set()


def main(argv: list[str] | None = None) -> int:
    try:
        config, run, notes = parse_settings(argv)
        from neural_attn.server.app import build_server
        from neural_attn.server.memory import KEPT, keep_freed_memory
        from neural_attn.server.observability import configure_logging, serve_metrics
    except ImportError as exc:
        print(
            f"neural-attn-server needs the server extras: pip install 'neural-attn[server]' "
            f"({exc})",
            file=sys.stderr,
        )
        return 2
    configure_logging(run.log_format, run.log_level)
    for note in notes:
        log.warning(note)
    if keep_freed_memory():
        log.info("malloc keeps freed memory for the next pass (%s)", KEPT)
    host, warnings = choose_host(config, run)
    for line in warnings:
        log.warning(line)
    try:
        app = build_server(host=host, port=run.port, config=config)
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    stopper = _Stopper()
    signal.signal(signal.SIGTERM, stopper)
    signal.signal(signal.SIGINT, stopper)
    if run.metrics_port is not None:
        # Plain HTTP with no token check: it follows only an address the operator chose, never
        # the every-interface default a token alone gives the gRPC port.
        metrics_host = run.metrics_host or run.host or "127.0.0.1"
        try:
            metrics_port = serve_metrics(app.metrics, host=metrics_host, port=run.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", metrics_host, run.metrics_port, exc)
            return 2
        log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    app.warm()
    app.server.start()
    log.info(
        "serving neural_attn.v1.AttentionService on %s:%d (%s, %s)",
        host,
        app.port,
        ("mutual TLS" if config.tls_client_ca else "TLS") if app.tls else "plaintext",
        "token required" if config.auth_token else "no token",
    )
    while not stopper.stop.wait(0.5):
        pass
    log.info(
        "%s: health NOT_SERVING, refusing new calls; in-flight calls get %g s (a second signal "
        "cuts them now)",
        stopper.signal_name,
        run.grace,
    )
    cut = app.drain(run.grace, give_up=stopper.hurry.is_set)
    if cut:
        for call in cut:
            log.error(
                "cut at the drain deadline: %s request_id=%s peer=%s running %.1f s",
                call.method,
                call.request_id,
                call.peer,
                call.age(),
            )
        log.error("exiting with %d: %d call(s) were cut", EXIT_CUT, len(cut))
        return EXIT_CUT
    log.info("drained: every call finished; exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
