"""TensorFlow weights: reading Keras `.weights.h5` files and `.keras` archives of the generated
model into the neutral layout (`backends.weights`).

Only the weights file inside a `.keras` archive is read (its config, which could name code,
never is), and an HDF5 file may neither link elsewhere nor store data outside itself.
"""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from neural_attn.backends.weight_files import (
    HDF5_MAGIC,
    KERAS_ARCHIVE,
    KERAS_H5,
    check_fit,
    file_words,
    reading,
)
from neural_attn.backends.weights import parameter_count
from neural_attn.dsl.ir import Network
from neural_attn.errors import InvalidInputError


def _keras_weights_member(content: bytes, fmt: str, name: str, network: Network) -> bytes:
    """model.weights.h5 out of a .keras archive, refused before unpacking when it would be
    larger than the network's weights can be (a deflated member can be a zip bomb)."""
    limit = 2 * 4 * parameter_count(network) + 64 * 2**20
    with reading(fmt, name), zipfile.ZipFile(io.BytesIO(content)) as z:
        if "model.weights.h5" not in z.namelist():
            raise InvalidInputError(f"{file_words(fmt, name)} has no model.weights.h5 inside")
        size = z.getinfo("model.weights.h5").file_size
        if size > limit:
            raise InvalidInputError(
                f"{file_words(fmt, name)} unpacks to a model.weights.h5 of {size:,} bytes; the "
                f"weights of `{network.name}` take at most {limit:,}"
            )
        return z.read("model.weights.h5")


def _snake(name: str) -> str:
    # Keras's own rule for the names under which a list of layers is saved.
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _h5_shapes(path: Path, name: str = "") -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            # External storage or links could make reading the file read other files.
            if obj.external:
                raise InvalidInputError(f"`{name}` in the weights file points outside it")
            shapes[name] = tuple(obj.shape)

    with reading(KERAS_H5, name), h5py.File(path, "r") as f:
        for inside, link in _links(f):
            if not isinstance(link, h5py.HardLink):
                raise InvalidInputError(f"`{inside}` in the weights file is a link elsewhere")
        f.visititems(visit)
    return shapes


def _links(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name in group:
        link = group.get(name, getlink=True)
        yield prefix + name, link
        if isinstance(link, h5py.HardLink) and isinstance(group[name], h5py.Group):
            yield from _links(group[name], prefix + name + "/")


def read_keras(
    network: Network, content: bytes, fmt: str, name: str, scratch: Callable[[], Any]
) -> dict[str, np.ndarray]:
    """A `.weights.h5` file or `.keras` archive of the generated model, in the neutral layout.

    `scratch()` builds the model the file is loaded into (on the CPU) and read back from.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.weights.h5"
        if fmt == KERAS_ARCHIVE:
            path.write_bytes(_keras_weights_member(content, fmt, name, network))
        else:
            path.write_bytes(content)
        if not path.read_bytes()[:8] == HDF5_MAGIC:
            raise InvalidInputError(f"{file_words(fmt, name)} is not an HDF5 file")
        got = _h5_shapes(path, name)  # the client's file first: refused before any build
        model = scratch()
        fresh = Path(tmp) / "fresh.weights.h5"
        model.model.save_weights(fresh)
        _check_keras(network, model.model, _h5_shapes(fresh), got)
        with reading(fmt, name, "does not load into the model"):
            model.model.load_weights(path)
    weights: dict[str, np.ndarray] = model.get_weights()
    return weights


def _check_keras(
    network: Network, model: Any, want: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]
) -> None:
    """Match the file's datasets to our layers: Keras saves a list of layers under
    `blocks/{snake_case(class)}[_n]`, counting per class in list order."""
    counts: dict[str, int] = {}
    expected = []
    for layer, block in zip(network.layers, model.blocks, strict=True):
        cls = _snake(type(block).__name__)
        n = counts.get(cls, 0)
        counts[cls] = n + 1
        prefix = f"blocks/{cls}" + (f"_{n}" if n else "") + "/"
        expected += [
            (layer.name, path, shape) for path, shape in want.items() if path.startswith(prefix)
        ]
    check_fit(expected, got)
