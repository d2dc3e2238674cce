"""What every `neural-attn-client` command shares: the model and connection options, the
client they make, and reading the files they name."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from neural_attn.client._client import AttentionClient


def token_option(p: argparse.ArgumentParser) -> None:
    """How to reach a server: token and TLS (each also a NEURAL_ATTN_* variable)."""
    p.add_argument(
        "--token",
        help="bearer token of a server that requires one ($NEURAL_ATTN_TOKEN; visible in `ps`: "
        "prefer --token-file)",
    )
    p.add_argument("--token-file", help="file holding the token ($NEURAL_ATTN_TOKEN_FILE)")
    p.add_argument(
        "--tls", action="store_true", default=None, help="TLS, system CAs ($NEURAL_ATTN_TLS)"
    )
    p.add_argument("--tls-ca", help="PEM CA that signed the server's cert ($NEURAL_ATTN_TLS_CA)")
    p.add_argument("--tls-cert", help="PEM client cert, mutual TLS ($NEURAL_ATTN_CLIENT_CERT)")
    p.add_argument("--tls-key", help="PEM key of --tls-cert ($NEURAL_ATTN_CLIENT_KEY)")


def client_for(
    args: argparse.Namespace, announce: Callable[[str], None] | None = None
) -> AttentionClient:
    """A client for --server / $NEURAL_ATTN_SERVER with the connection flags, else for the
    embedded server (`announce` is told when it starts)."""
    from neural_attn.client._client import AttentionClient
    from neural_attn.client._connection import read_token_file
    from neural_attn.client._embedded import server_target

    target, embedded = server_target(args.server, announce=announce)
    if embedded:
        return AttentionClient()  # the embedded server, in clear on loopback
    token = args.token or (read_token_file(args.token_file) if args.token_file else None)
    return AttentionClient(
        target,
        token=token,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the .neural model file")
    p.add_argument("--backend", choices=("tensorflow", "pytorch"), default="tensorflow")
    p.add_argument(
        "--server",
        help="host:port, dns:///name:port or a comma list of replicas of a neural-attn server "
        "($NEURAL_ATTN_SERVER; default: an embedded server)",
    )
    p.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    p.add_argument("--network", help="which network, when the file defines several")
    p.add_argument(
        "--weights",
        help="trained weights file sent to the server: neutral .npz or .safetensors, Keras "
        ".weights.h5 / .keras, or a PyTorch state_dict (.pt); any of them fits either backend",
    )
    p.add_argument("--server-weights", help="a weights file under the server's --weights-dir")
    token_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def load_data(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read --data {path}: {exc}") from None


def check_file(path: str) -> None:
    if not Path(path).is_file():
        print(f"error: no such file: {path}", file=sys.stderr)
        raise SystemExit(2)
