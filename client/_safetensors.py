"""The safetensors format read and written with numpy alone (the thin client has no framework).

A file is an 8-byte little-endian header length, a JSON header (per tensor its dtype, shape and
byte range; an optional ``__metadata__``), then the raw little-endian bytes. Reading maps the
file (a 500 MB checkpoint is never copied whole) and gives float32 for BF16 exactly (a
bfloat16 is the top half of a float32), which numpy has no type for.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from neural_attn.errors import InvalidInputError

_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
_MAX_HEADER = 100 * 2**20


def read(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one file, as read-only arrays over the mapped file (BF16 as float32)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size < 8:
        raise InvalidInputError(f"{path} is not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    if length > min(_MAX_HEADER, data.size - 8):
        raise InvalidInputError(f"{path} is not a safetensors file (header of {length} bytes)")
    try:
        header = json.loads(bytes(data[8 : 8 + length]))
    except ValueError as exc:
        raise InvalidInputError(f"{path} has an unreadable safetensors header: {exc}") from None
    body = data[8 + length :]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
        raw = body[start:stop]
        if dtype == "BF16":
            halves = raw.view("<u2").astype(np.uint32) << 16
            tensors[name] = halves.view(np.float32).reshape(shape)
        elif dtype in _DTYPES:
            tensors[name] = raw.view(_DTYPES[dtype]).reshape(shape)
        else:
            raise InvalidInputError(f"{path}: tensor {name!r} has dtype {dtype}, not one we read")
    return tensors


def write(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write float32 tensors (in the mapping's order) as a standard safetensors file."""
    header: dict[str, object] = {}
    offset = 0
    arrays = []
    for name, value in tensors.items():
        array = np.ascontiguousarray(value, dtype="<f4")
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        arrays.append(array)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for array in arrays:
            out.write(array.tobytes())
