"""Tensors on the wire: dtype enum, int64 shape, raw little-endian C-order bytes.

The one codec both sides use; `dsl/` and `backends/` never see a proto message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neural_attn.errors import InvalidInputError
from neural_attn.v1 import attention_pb2 as pb

_TO_NUMPY: dict[Any, np.dtype[Any]] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.INT32: np.dtype("<i4"),
    pb.INT64: np.dtype("<i8"),
}
_FROM_NUMPY = {dt.newbyteorder("=").str: code for code, dt in _TO_NUMPY.items()}
_FROM_NUMPY.update({dt.str: code for code, dt in _TO_NUMPY.items()})

MAX_RANK = 8
MAX_DIM = 2**31 - 1

BACKEND_NAMES: dict[Any, str] = {pb.TENSORFLOW: "tensorflow", pb.PYTORCH: "pytorch"}
BACKEND_CODES = {name: code for code, name in BACKEND_NAMES.items()}

# The weights formats by their wire code and their name, the name being the one
# `backends.weight_files` uses (a test keeps the two in step: backends never import protos).
WEIGHTS_FORMAT_NAMES: dict[Any, str] = {
    pb.NEUTRAL_NPZ: "npz",
    pb.KERAS_WEIGHTS_H5: "keras_h5",
    pb.KERAS_ARCHIVE: "keras_archive",
    pb.TORCH_STATE_DICT: "torch",
    pb.SAFETENSORS: "safetensors",
}
WEIGHTS_FORMAT_CODES = {name: code for code, name in WEIGHTS_FORMAT_NAMES.items()}
# The framework-neutral ones, which ExportWeights writes; the first is its default.
EXPORT_FORMATS = ("npz", "safetensors")


def numpy_dtype(code: int) -> np.dtype[Any]:
    """The numpy dtype of a wire dtype code; InvalidInputError for an unknown one."""
    try:
        return _TO_NUMPY[code]
    except KeyError:
        names = ", ".join(pb.DType.Name(c) for c in _TO_NUMPY)
        raise InvalidInputError(
            f"unsupported tensor dtype code {code}; use one of {names}"
        ) from None


def dtype_code(dtype: np.dtype[Any] | str) -> Any:
    """The wire dtype code of a numpy dtype; InvalidInputError for one we do not carry."""
    dt = np.dtype(dtype)
    code = _FROM_NUMPY.get(dt.str) or _FROM_NUMPY.get(dt.newbyteorder("<").str)
    if code is None:
        raise InvalidInputError(
            f"tensors of dtype {dt} cannot be sent; use float32, float16, float64, int32 or int64"
        )
    return code


# float16's smallest normal value: below it a float16 holds fewer bits (a subnormal, or zero).
_HALF_NORMAL = np.float32(2.0**-14)
_HALF_STEP = 2.0**-24  # the spacing of float16's subnormals


def cast(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """`values` as `dtype` (no copy when they are already), rounded as numpy's cast rounds.

    float32 to float16 avoids numpy's slow path: its cast raises the floating-point underflow
    flag once for every value that float16 holds only inexactly as a subnormal or zero, and
    most of a layer of attention is such values (12 heads x 512², 1 MiB at a time: 146 ms,
    against 31 ms here and 8 for as many values float16 holds as normals). Those values are
    rounded to float16's subnormal grid in float32 first (exactly: powers of two and a round
    half to even), so the cast has nothing left to round.
    """
    if values.dtype != np.float32 or np.dtype(dtype) != np.float16:
        return values.astype(dtype, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        grid = np.rint(values * np.float32(1 / _HALF_STEP)) * np.float32(_HALF_STEP)
    return np.where(np.abs(values) < _HALF_NORMAL, grid, values).astype(np.float16)


def to_proto(array: np.ndarray, *, dtype: np.dtype[Any] | None = None) -> pb.Tensor:
    """Encode `array` (optionally cast to `dtype`) as a Tensor message."""
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    code = dtype_code(arr.dtype)
    data = np.ascontiguousarray(arr, dtype=_TO_NUMPY[code]).tobytes()
    return pb.Tensor(dtype=code, shape=list(arr.shape), content=data)


def expected_nbytes(tensor: pb.Tensor) -> int:
    """Bytes the tensor's shape and dtype call for (checked before decoding anything)."""
    if any(d < 0 for d in tensor.shape):
        raise InvalidInputError(f"tensor shape {list(tensor.shape)} has a negative dimension")
    if len(tensor.shape) > MAX_RANK or any(d > MAX_DIM for d in tensor.shape):
        raise InvalidInputError(
            f"tensor shape {list(tensor.shape)[: MAX_RANK + 1]} is not a shape we can hold: at "
            f"most {MAX_RANK} dimensions, each at most {MAX_DIM}"
        )
    count = 1
    for d in tensor.shape:
        count *= d
    return count * numpy_dtype(tensor.dtype).itemsize


def element_count(tensor: pb.Tensor) -> int:
    """Elements the tensor's shape calls for (checked before decoding anything)."""
    return expected_nbytes(tensor) // numpy_dtype(tensor.dtype).itemsize


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a Tensor message, checking that its bytes match its shape and dtype."""
    dt = numpy_dtype(tensor.dtype)
    want = expected_nbytes(tensor)
    if len(tensor.content) != want:
        raise InvalidInputError(
            f"tensor of shape {list(tensor.shape)} and dtype {dt.name} needs {want} bytes "
            f"of content; got {len(tensor.content)}"
        )
    array = np.frombuffer(tensor.content, dtype=dt).reshape(tuple(tensor.shape))
    return array.astype(dt.newbyteorder("="), copy=True)
