"""Weights files in the framework-neutral layout, and the checks every weights reader shares.

Formats: our neutral `.npz` and `.safetensors` ("layer/param" -> array, see `backends.weights`),
read and written here; Keras `.weights.h5` and `.keras` archives of the generated TensorFlow
model and PyTorch `state_dict` files of the generated PyTorch model, read by the backend that
wrote them (`Backend.read_weights`, into a scratch model, then turned into the neutral layout;
`base.read_weights` picks the reader). Every format loads into either backend. This module
imports no framework.

Nothing user-supplied is ever executed: `.npz` is read with `allow_pickle=False`, `.safetensors`
holds no code by design, and the framework readers say how they keep to that. A file that does
not fit is refused naming the first layer that does not fit and both shapes. A file no library
can read (truncated, bytes flipped, not that format at all) is INVALID_ARGUMENT naming the
format and the file, whatever the library raised: the failure is the file's, never a bug of the
server's.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from neural_attn.backends.weights import weight_shapes
from neural_attn.dsl.ir import Network
from neural_attn.errors import InvalidInputError, NeuralAttnError, excerpt

NPZ, KERAS_H5, KERAS_ARCHIVE, TORCH = "npz", "keras_h5", "keras_archive", "torch"
SAFETENSORS = "safetensors"
FORMATS = (NPZ, KERAS_H5, KERAS_ARCHIVE, TORCH, SAFETENSORS)
# Formats in the neutral layout, read and written here (any backend loads them).
NEUTRAL_FORMATS = (NPZ, SAFETENSORS)
# The other formats and the backend that reads them.
FRAMEWORK_FORMATS = {KERAS_H5: "tensorflow", KERAS_ARCHIVE: "tensorflow", TORCH: "pytorch"}
_FORMAT_WORDS = {
    NPZ: "neutral .npz",
    KERAS_H5: "Keras .weights.h5 (HDF5)",
    KERAS_ARCHIVE: ".keras archive",
    TORCH: "PyTorch state_dict",
    SAFETENSORS: "neutral .safetensors",
}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def file_words(fmt: str, name: str) -> str:
    """How messages name a weights file: its format and, when known, its name."""
    named = f" {excerpt(name)!r}" if name else ""
    return f"the {_FORMAT_WORDS.get(fmt, fmt)} weights file{named}"


@contextmanager
def reading(fmt: str, name: str, doing: str = "is not readable") -> Iterator[None]:
    """Around a library reading the client's bytes: whatever it raises becomes
    INVALID_ARGUMENT naming the format and the file (zlib, tokenize, h5py and zipfile raise
    errors of their own kinds, not only OSError and ValueError). Our own refusals pass."""
    try:
        yield
    except NeuralAttnError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here is the file's
        detail = excerpt(str(exc) or type(exc).__name__, 200)
        raise InvalidInputError(
            f"{file_words(fmt, name)} {doing}: {type(exc).__name__}: {detail}"
        ) from None


def guess_format(filename: str, content: bytes) -> str:
    """The format of a weights file, from its name, else from its first bytes."""
    name = filename.lower()
    for suffix, fmt in (
        (".npz", NPZ),
        (".safetensors", SAFETENSORS),
        (".h5", KERAS_H5),
        (".keras", KERAS_ARCHIVE),
        (".pt", TORCH),
        (".pth", TORCH),
        (".bin", TORCH),
    ):
        if name.endswith(suffix):
            return fmt
    if content.startswith(HDF5_MAGIC):
        return KERAS_H5
    if content[8:10] in (b'{"', b"{}"):  # a little-endian header size, then the JSON header
        return SAFETENSORS
    if content.startswith(b"PK"):
        try:
            names = zipfile.ZipFile(io.BytesIO(content)).namelist()
        except Exception:  # noqa: BLE001 - a broken archive is simply not recognised
            names = []
        if "model.weights.h5" in names:
            return KERAS_ARCHIVE
        if any(n.endswith("data.pkl") for n in names):
            return TORCH
        if names and all(n.endswith(".npy") for n in names):
            return NPZ
    raise InvalidInputError(
        "cannot tell the format of the weights file; name it *.npz, *.safetensors, *.weights.h5, "
        "*.keras or *.pt, or give the format explicitly"
    )


def check_fit(
    expected: Sequence[tuple[str, str, tuple[int, ...]]],
    got: Mapping[str, tuple[int, ...]],
) -> None:
    """Refuse a file whose parameters do not fit, naming the first layer that does not and
    both shapes. `expected`: (layer, key, shape) in model order; `got`: key -> shape in the file.
    """
    for layer, key, shape in expected:
        if key not in got:
            raise InvalidInputError(
                f"the weights do not fit layer `{layer}`: `{key}` of shape {shape} is missing "
                "from the file"
            )
        if tuple(got[key]) != tuple(shape):
            raise InvalidInputError(
                f"the weights do not fit layer `{layer}`: `{key}` is {tuple(got[key])} in the "
                f"file but the model needs {tuple(shape)}"
            )
    known = {key for _, key, _ in expected}
    extra = [key for key in got if key not in known]
    if extra:
        raise InvalidInputError(
            f"the weights file has `{extra[0]}`, which is no parameter of this model "
            f"({len(extra)} unknown in all)"
        )


def _neutral_expected(network: Network) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(key.split("/", 1)[0], key, shape) for key, shape in weight_shapes(network).items()]


def check_neutral(network: Network, weights: dict[str, np.ndarray]) -> None:
    """Refuse neutral weights that do not fit the network or are not finite."""
    check_fit(_neutral_expected(network), {k: tuple(np.shape(v)) for k, v in weights.items()})
    for key, value in weights.items():
        if not np.all(np.isfinite(value)):
            raise InvalidInputError(
                f"`{key}` holds NaN or infinite values; attention from it would not be "
                "probabilities"
            )


def read_npz(content: bytes, network: Network, *, name: str = "") -> dict[str, np.ndarray]:
    """Read a neutral .npz, checking names, shapes and dtypes from the array headers before
    anything is decompressed (a small compressed file cannot make the server allocate more
    than the model's own size)."""
    from numpy.lib import format as npy

    with reading(NPZ, name), zipfile.ZipFile(io.BytesIO(content)) as archive:
        members = {n[: -len(".npy")]: n for n in archive.namelist() if n.endswith(".npy")}
        headers = {}
        for key, member in members.items():
            with archive.open(member) as f:
                major, _ = npy.read_magic(f)
                read = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
                headers[key] = read(f)  # (shape, fortran_order, dtype)
        check_fit(_neutral_expected(network), {k: h[0] for k, h in headers.items()})
        for key, (_, _, dtype) in headers.items():
            if dtype.kind != "f":
                raise InvalidInputError(f"`{key}` holds {dtype}; weights must be floats")
        weights = {}
        for key, member in members.items():
            with archive.open(member) as f:
                weights[key] = npy.read_array(f, allow_pickle=False).astype(np.float32)
        return weights


def read_safetensors(content: bytes, network: Network, *, name: str = "") -> dict[str, np.ndarray]:
    """Read a neutral .safetensors, checking names, shapes and dtypes from its header before
    any tensor is read."""
    with reading(SAFETENSORS, name):
        (size,) = struct.unpack("<Q", content[:8])
        if size > len(content) - 8:
            raise ValueError(f"a header of {size:,} bytes in a file of {len(content):,}")
        header = json.loads(content[8 : 8 + size])
        entries = {
            key: (tuple(int(d) for d in entry["shape"]), str(entry["dtype"]))
            for key, entry in header.items()
            if key != "__metadata__"
        }
    check_fit(_neutral_expected(network), {key: shape for key, (shape, _) in entries.items()})
    for key, (_, dtype) in entries.items():
        if dtype not in ("F16", "F32", "F64"):
            raise InvalidInputError(f"`{key}` holds {excerpt(dtype)}; weights must be floats")
    from safetensors.numpy import load

    with reading(SAFETENSORS, name):
        return {key: value.astype(np.float32) for key, value in load(content).items()}


def read_neutral(
    network: Network, content: bytes, fmt: str, *, name: str = ""
) -> dict[str, np.ndarray]:
    """Read a weights file in one of the `NEUTRAL_FORMATS` (names and shapes checked)."""
    if fmt == SAFETENSORS:
        return read_safetensors(content, network, name=name)
    return read_npz(content, network, name=name)


def to_npz(weights: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **weights)  # type: ignore[arg-type]
    return buffer.getvalue()


def to_safetensors(weights: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return bytes(save({k: np.ascontiguousarray(v) for k, v in weights.items()}))


def write(weights: dict[str, np.ndarray], fmt: str) -> bytes:
    """Neutral weights as a file of one of the `NEUTRAL_FORMATS`."""
    if fmt == SAFETENSORS:
        return to_safetensors(weights)
    if fmt == NPZ:
        return to_npz(weights)
    raise InvalidInputError(
        f"weights are exported as {' or '.join(NEUTRAL_FORMATS)}, not {excerpt(fmt)!r}"
    )
