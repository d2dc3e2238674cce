"""What each backend would run on here, for the server's info report and Compile's response."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from neural_attn.backends.base import get_backend
from neural_attn.errors import BackendUnavailableError


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


def status(backend: str, requested_device: str) -> BackendStatus:
    try:
        device = get_backend(backend).resolve_device(requested_device)
    except BackendUnavailableError as exc:
        return BackendStatus(backend, False, detail=str(exc))
    module = {"pytorch": "torch", "tensorflow": "tensorflow"}[backend]
    version = _version(*(("torch",) if backend == "pytorch" else ("tensorflow-cpu", "tensorflow")))
    return BackendStatus(
        backend, True, version or importlib.import_module(module).__version__, device
    )
