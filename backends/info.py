"""What each backend would run on here, for the server's info report and Compile's response."""

from __future__ import annotations

from dataclasses import dataclass

from neural_attn.backends.base import get_backend
from neural_attn.errors import BackendUnavailableError


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    version: str = ""
    device: str = ""
    detail: str = ""


def status(backend: str, requested_device: str) -> BackendStatus:
    try:
        built = get_backend(backend)
        device = built.resolve_device(requested_device)
    except BackendUnavailableError as exc:
        return BackendStatus(backend, False, detail=str(exc))
    return BackendStatus(backend, True, built.framework_version(), device)
