"""Trained weights files: read any supported format into the framework-neutral layout.

Formats: our neutral `.npz` ("layer/param" -> array, see `backends.weights`), Keras
`.weights.h5` and `.keras` archives of the generated TensorFlow model, and PyTorch `state_dict`
files of the generated PyTorch model. Every format loads into either backend: a file is read
by the backend that wrote it (into a scratch model), turned into the neutral layout, then
loaded into the model being served.

Nothing user-supplied is ever executed: `torch.load(..., weights_only=True)`; only the weights
file inside a `.keras` archive is read (its config, which could name code, never is); `.npz`
with `allow_pickle=False`. A file that does not fit is refused naming the first layer that
does not fit and both shapes. A file no library can read (truncated, bytes flipped, not that
format at all) is INVALID_ARGUMENT naming the format and the file, whatever the library raised:
the failure is the file's, never a bug of the server's.
"""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from neural_attn.backends.weights import parameter_count, weight_shapes
from neural_attn.dsl.ir import Network
from neural_attn.errors import InvalidInputError, NeuralAttnError, excerpt

NPZ, KERAS_H5, KERAS_ARCHIVE, TORCH = "npz", "keras_h5", "keras_archive", "torch"
FORMATS = (NPZ, KERAS_H5, KERAS_ARCHIVE, TORCH)
_FORMAT_WORDS = {
    NPZ: "neutral .npz",
    KERAS_H5: "Keras .weights.h5 (HDF5)",
    KERAS_ARCHIVE: ".keras archive",
    TORCH: "PyTorch state_dict",
}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _file_words(fmt: str, name: str) -> str:
    named = f" {excerpt(name)!r}" if name else ""
    return f"the {_FORMAT_WORDS.get(fmt, fmt)} weights file{named}"


@contextmanager
def _reading(fmt: str, name: str, doing: str = "is not readable") -> Iterator[None]:
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
            f"{_file_words(fmt, name)} {doing}: {type(exc).__name__}: {detail}"
        ) from None


def guess_format(filename: str, content: bytes) -> str:
    """The format of a weights file, from its name, else from its first bytes."""
    name = filename.lower()
    for suffix, fmt in (
        (".npz", NPZ),
        (".h5", KERAS_H5),
        (".keras", KERAS_ARCHIVE),
        (".pt", TORCH),
        (".pth", TORCH),
        (".bin", TORCH),
    ):
        if name.endswith(suffix):
            return fmt
    if content.startswith(_HDF5_MAGIC):
        return KERAS_H5
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
        "cannot tell the format of the weights file; name it *.npz, *.weights.h5, *.keras or "
        "*.pt, or give the format explicitly"
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

    with _reading(NPZ, name), zipfile.ZipFile(io.BytesIO(content)) as archive:
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


def to_npz(weights: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **weights)  # type: ignore[arg-type]
    return buffer.getvalue()


def to_neutral(
    network: Network, content: bytes, fmt: str, *, name: str = ""
) -> dict[str, np.ndarray]:
    """Read a weights file of any format into the neutral layout (names and shapes checked;
    `BuiltModel.set_weights` checks the values when they are loaded).

    `name`: the file's name as the client gave it, for messages.
    """
    if fmt == NPZ:
        weights = read_npz(content, network, name=name)
    elif fmt == TORCH:
        weights = _from_torch(network, content, name)
    elif fmt in (KERAS_H5, KERAS_ARCHIVE):
        weights = _from_keras(network, content, fmt, name)
    else:
        raise InvalidInputError(
            f"unknown weights format {excerpt(fmt)!r}; use one of {', '.join(FORMATS)}"
        )
    return weights


def _scratch(network: Network, backend: str) -> Any:
    from neural_attn.backends.base import get_backend

    return get_backend(backend).build(network, seed=0, device="cpu")


def _from_torch(network: Network, content: bytes, name: str) -> dict[str, np.ndarray]:
    import torch

    _check_torch_archive(content, name)
    with _reading(TORCH, name, "does not load with weights_only=True"):
        state = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InvalidInputError(f"{_file_words(TORCH, name)} holds no dict of tensors")
    scratch = _scratch(network, "pytorch")
    expected = [
        (key.split(".")[1] if key.startswith("blocks.") else key, key, tuple(tensor.shape))
        for key, tensor in scratch.model.state_dict().items()
    ]
    check_fit(expected, {k: tuple(getattr(v, "shape", ())) for k, v in state.items()})
    for key, value in state.items():
        if not (
            isinstance(value, torch.Tensor)
            and value.layout == torch.strided
            and value.is_floating_point()
        ):
            raise InvalidInputError(f"`{key}` in the state_dict is not a dense float tensor")
    with _reading(TORCH, name, "does not load into the model"):
        scratch.model.load_state_dict(state)
    weights: dict[str, np.ndarray] = scratch.get_weights()
    return weights


def _check_torch_archive(content: bytes, name: str) -> None:
    """Only archives that cannot unpack to more than their own size reach torch.load:
    torch.save writes a zip of stored (uncompressed) entries, and a compressed entry could
    make a small file allocate gigabytes (the legacy format declares storage sizes that are
    allocated before they are read)."""
    what = _file_words(TORCH, name)
    if not content.startswith(b"PK"):
        raise InvalidInputError(
            f"{what} is not a torch.save archive (a zip, the format since PyTorch 1.6); only "
            "those are read, with weights_only=True"
        )
    with (
        _reading(TORCH, name, "is not a readable zip archive"),
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


def _keras_weights_member(content: bytes, fmt: str, name: str, network: Network) -> bytes:
    """model.weights.h5 out of a .keras archive, refused before unpacking when it would be
    larger than the network's weights can be (a deflated member can be a zip bomb)."""
    limit = 2 * 4 * parameter_count(network) + 64 * 2**20
    with _reading(fmt, name), zipfile.ZipFile(io.BytesIO(content)) as z:
        if "model.weights.h5" not in z.namelist():
            raise InvalidInputError(f"{_file_words(fmt, name)} has no model.weights.h5 inside")
        size = z.getinfo("model.weights.h5").file_size
        if size > limit:
            raise InvalidInputError(
                f"{_file_words(fmt, name)} unpacks to a model.weights.h5 of {size:,} bytes; the "
                f"weights of `{network.name}` take at most {limit:,}"
            )
        return z.read("model.weights.h5")


def _snake(name: str) -> str:
    # Keras's own rule for the names under which a list of layers is saved.
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _h5_shapes(path: Path, name: str = "") -> dict[str, tuple[int, ...]]:
    import h5py

    shapes: dict[str, tuple[int, ...]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            # External storage or links could make reading the file read other files.
            if obj.external:
                raise InvalidInputError(f"`{name}` in the weights file points outside it")
            shapes[name] = tuple(obj.shape)

    with _reading(KERAS_H5, name), h5py.File(path, "r") as f:
        for inside, link in _links(f):
            if not isinstance(link, h5py.HardLink):
                raise InvalidInputError(f"`{inside}` in the weights file is a link elsewhere")
        f.visititems(visit)
    return shapes


def _links(group: Any, prefix: str = "") -> Any:
    import h5py

    for name in group:
        link = group.get(name, getlink=True)
        yield prefix + name, link
        if isinstance(link, h5py.HardLink) and isinstance(group[name], h5py.Group):
            yield from _links(group[name], prefix + name + "/")


def _from_keras(network: Network, content: bytes, fmt: str, name: str) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.weights.h5"
        if fmt == KERAS_ARCHIVE:
            path.write_bytes(_keras_weights_member(content, fmt, name, network))
        else:
            path.write_bytes(content)
        if not path.read_bytes()[:8] == _HDF5_MAGIC:
            raise InvalidInputError(f"{_file_words(fmt, name)} is not an HDF5 file")
        got = _h5_shapes(path, name)  # the client's file first: refused before any build
        scratch = _scratch(network, "tensorflow")
        fresh = Path(tmp) / "fresh.weights.h5"
        scratch.model.save_weights(fresh)
        _check_keras(network, scratch.model, _h5_shapes(fresh), got)
        with _reading(fmt, name, "does not load into the model"):
            scratch.model.load_weights(path)
    weights: dict[str, np.ndarray] = scratch.get_weights()
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
