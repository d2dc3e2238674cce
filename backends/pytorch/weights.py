"""PyTorch weights: the neutral layout (`backends.weights`) onto torch tensors and back, and
reading `state_dict` files of the generated model.

Keras layouts become torch's: a kernel (in, out) is a Linear weight (out, in), a convolution
kernel (k.., in, out) is (out, in, k..), and a GRU's gates go from Keras's z, r, h to torch's
r, z, n with its (2, 3u) bias split into bias_ih and bias_hh. Which conversion a parameter takes
is its layer type's `layout` in the catalogue.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from neural_attn.backends.pytorch.catalogue import CONV, GRU
from neural_attn.backends.weight_files import TORCH, check_fit, file_words, reading
from neural_attn.dsl.ir import Network
from neural_attn.errors import InvalidInputError, excerpt

Tensors = torch.Tensor | tuple[torch.Tensor, ...]
Arrays = np.ndarray | tuple[np.ndarray, ...]
_GRU_GATES = [1, 0, 2]  # Keras z, r, h <-> torch r, z, n (its own inverse)


def _gru_gates(value: np.ndarray) -> np.ndarray:
    """Reorder the gate blocks of the last axis between Keras's and torch's order."""
    blocks = value.reshape(*value.shape[:-1], 3, value.shape[-1] // 3)
    return blocks[..., _GRU_GATES, :].reshape(value.shape)


# Neutral layout -> torch layout and back. A kernel (in, out) is a Linear weight (out, in).
def to_torch(layout: str, param: str, value: np.ndarray) -> Arrays:
    if layout == CONV and param == "kernel":  # (k.., in, out) -> (out, in, k..)
        return np.transpose(value, (value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)))
    if layout == GRU:
        value = _gru_gates(value)
        return (value[0], value[1]) if param == "bias" else value.T
    if param.endswith(("query_kernel", "key_kernel", "value_kernel")):  # (d, heads, key_dim)
        return value.reshape(value.shape[0], -1).T
    if param.endswith("kernel"):  # (in, out) or the attention output's (heads, key_dim, d)
        return value.reshape(-1, value.shape[-1]).T
    return value.reshape(-1) if param.endswith("bias") else value


def from_torch(layout: str, param: str, value: Arrays, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, tuple):  # GRU bias: (bias_ih, bias_hh)
        return _gru_gates(np.stack(value)).reshape(shape)
    if layout == CONV and param == "kernel":
        return np.ascontiguousarray(np.transpose(value, (*range(2, value.ndim), 1, 0)))
    if layout == GRU:
        return np.ascontiguousarray(_gru_gates(value.T))
    if param.endswith("kernel"):
        return np.ascontiguousarray(value.T).reshape(shape)
    return value.reshape(shape)


def read_state_dict(
    network: Network, content: bytes, name: str, scratch: Callable[[], Any]
) -> dict[str, np.ndarray]:
    """A `torch.save(model.state_dict())` file of the generated model, in the neutral layout.

    `scratch()` builds the model the file is loaded into (on the CPU) and read back from.
    """
    _check_torch_archive(content, name)
    with reading(TORCH, name, "does not load with weights_only=True"):
        state = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InvalidInputError(f"{file_words(TORCH, name)} holds no dict of tensors")
    model = scratch()
    expected = [
        (key.split(".")[1] if key.startswith("blocks.") else key, key, tuple(tensor.shape))
        for key, tensor in model.model.state_dict().items()
    ]
    check_fit(expected, {k: tuple(getattr(v, "shape", ())) for k, v in state.items()})
    for key, value in state.items():
        if not (
            isinstance(value, torch.Tensor)
            and value.layout == torch.strided
            and value.is_floating_point()
        ):
            raise InvalidInputError(f"`{key}` in the state_dict is not a dense float tensor")
    with reading(TORCH, name, "does not load into the model"):
        model.model.load_state_dict(state)
    weights: dict[str, np.ndarray] = model.get_weights()
    return weights


def _check_torch_archive(content: bytes, name: str) -> None:
    """Only archives that cannot unpack to more than their own size reach torch.load:
    torch.save writes a zip of stored (uncompressed) entries, and a compressed entry could
    make a small file allocate gigabytes (the legacy format declares storage sizes that are
    allocated before they are read)."""
    what = file_words(TORCH, name)
    if not content.startswith(b"PK"):
        raise InvalidInputError(
            f"{what} is not a torch.save archive (a zip, the format since PyTorch 1.6); only "
            "those are read, with weights_only=True"
        )
    with (
        reading(TORCH, name, "is not a readable zip archive"),
        zipfile.ZipFile(io.BytesIO(content)) as archive,
    ):
        entries = archive.infolist()
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise InvalidInputError(
            f"{what} has compressed entries ({excerpt(packed[0])}); torch.save stores them "
            "uncompressed, and only such archives are read"
        )
    if sum(e.file_size for e in entries) > len(content):
        raise InvalidInputError(f"{what} claims entries larger than the file itself")
