"""What each backend would run on here, for the server's info report and Compile's response."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from neural_attn.errors import BackendUnavailableError, InvalidInputError


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    version: str = ""
    device: str = ""
    detail: str = ""


def _version(*distributions: str) -> str:
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


def resolve_device(backend: str, requested: str) -> str:
    """The device `requested` (auto | cpu | cuda) means for `backend` on this machine."""
    if requested not in ("auto", "cpu", "cuda"):
        raise InvalidInputError(f"device must be auto, cpu or cuda; got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if backend == "pytorch":
        import torch

        has_gpu = torch.cuda.is_available()
    else:
        import tensorflow as tf

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if has_gpu:
        return "cuda:0"
    if requested == "cuda":
        raise BackendUnavailableError(
            f"--device cuda was asked for but {backend} sees no CUDA device here; "
            "use --device auto or cpu"
        )
    return "cpu"


def status(backend: str, requested_device: str) -> BackendStatus:
    from neural_attn.backends.base import get_backend

    try:
        get_backend(backend)
        device = resolve_device(backend, requested_device)
    except BackendUnavailableError as exc:
        return BackendStatus(backend, False, detail=str(exc))
    module = {"pytorch": "torch", "tensorflow": "tensorflow"}[backend]
    version = _version(*(("torch",) if backend == "pytorch" else ("tensorflow-cpu", "tensorflow")))
    return BackendStatus(
        backend, True, version or importlib.import_module(module).__version__, device
    )
