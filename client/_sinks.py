"""Where streamed attention goes as its chunks arrive: one array in memory, an .npz or .npy files.

`AttentionClient.extract_layers(..., sink=...)` calls a sink's `begin` once per layer, `write`
for each chunk (at its flat C-order element offset), and `end` when the layer is complete;
what `end` returns is what the client yields for that layer. A sink never holds more than it
must: `ArraySink` fills one preallocated array per layer, `NpzSink` and `NpyDirSink` write each
chunk to disk and keep nothing. A long layer arrives tile by tile, each (item, head)'s rows of a
tile in turn, so its chunks come out of the file's order: the file sinks write what comes in
order straight through and spool the rest to a scratch file beside the output, which is copied
in, in order, when the layer is complete.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from neural_attn.errors import InvalidInputError
from neural_attn.pooling import Pooling

__all__ = ["ArraySink", "LayerHeader", "LayerSink", "NpyDirSink", "NpzSink", "Pooling"]


@dataclass(frozen=True)
class LayerHeader:
    """What the first chunk of a layer says about the whole of it."""

    name: str
    index: int  # position among the model's layers
    shape: tuple[int, ...]  # (batch, heads, query, key) of the tensor sent
    dtype: np.dtype[Any]
    head: int | None  # the one head sent, or None for all heads
    pooling: Pooling | None  # how the server cut and pooled it; None: exact and whole

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class LayerSink(Protocol):
    def begin(self, header: LayerHeader) -> None: ...

    def write(self, offset: int, values: np.ndarray) -> None: ...

    def end(self) -> Any: ...


class ArraySink:
    """Each layer into one array allocated when its first chunk arrives; `end` returns it."""

    def __init__(self) -> None:
        self._buffer: np.ndarray | None = None
        self._shape: tuple[int, ...] = ()

    def begin(self, header: LayerHeader) -> None:
        self._buffer = np.empty(header.size, dtype=header.dtype)
        self._shape = header.shape

    def write(self, offset: int, values: np.ndarray) -> None:
        assert self._buffer is not None
        self._buffer[offset : offset + values.size] = values

    def end(self) -> np.ndarray:
        assert self._buffer is not None
        out, self._buffer = self._buffer.reshape(self._shape), None
        return out


class _FileSink:
    """Writes each layer as an .npy stream, front to back: chunks in order go straight to it,
    the others (a tiled layer's) to a scratch file at their place, copied in at the end."""

    def __init__(self) -> None:
        self._out: BinaryIO | None = None
        self._header: LayerHeader | None = None
        self._written = 0  # elements written straight to the stream, front to back
        self._spool: BinaryIO | None = None

    def _open(self, header: LayerHeader) -> BinaryIO:
        raise NotImplementedError

    def _scratch_dir(self) -> Path:
        raise NotImplementedError

    def _finish(self, header: LayerHeader) -> Any:
        return None

    def begin(self, header: LayerHeader) -> None:
        self._header, self._written = header, 0
        self._out = self._open(header)
        np.lib.format.write_array_header_2_0(
            self._out,
            {
                "descr": np.lib.format.dtype_to_descr(header.dtype),
                "fortran_order": False,
                "shape": header.shape,
            },
        )

    def write(self, offset: int, values: np.ndarray) -> None:
        assert self._out is not None and self._header is not None
        data = np.ascontiguousarray(values).data.cast("B")
        if self._spool is None and offset == self._written:
            self._out.write(data)
            self._written += values.size
            return
        if offset < self._written or offset + values.size > self._header.size:
            raise InvalidInputError(
                f"chunk of `{self._header.name}` at element {offset} overlaps what arrived "
                "or lies outside the layer"
            )
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(dir=self._scratch_dir(), prefix=".spool-")
        os.pwrite(
            self._spool.fileno(), data, (offset - self._written) * self._header.dtype.itemsize
        )

    def end(self) -> Any:
        assert self._out is not None and self._header is not None
        if self._spool is not None:
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, self._out, 16 * 1024 * 1024)
            self._spool.close()
            self._spool = None
        self._out.close()
        self._out = None
        return self._finish(self._header)


class NpzSink(_FileSink):
    """Writes every layer into one uncompressed .npz as its chunks arrive (keyed by layer name).

    `np.load(path)[name]` reads it back like any .npz. Use as a context manager, or call
    `close()`: the archive's directory is written then.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True)

    def _open(self, header: LayerHeader) -> BinaryIO:
        return self._zip.open(f"{header.name}.npy", "w", force_zip64=True)  # type: ignore[return-value]

    def _scratch_dir(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._out is not None:
            self._out.close()
            self._out = None
        self._zip.close()

    def __enter__(self) -> NpzSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NpyDirSink(_FileSink):
    """Writes each layer to `{directory}/{layer}.npy` as its chunks arrive; `end` returns the
    file opened read-only with `mmap_mode="r"` (nothing is read until it is used)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, header: LayerHeader) -> Path:
        return self.directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', header.name)}.npy"

    def _open(self, header: LayerHeader) -> BinaryIO:
        return open(self._path(header), "wb")  # noqa: SIM115 (closed in end)

    def _scratch_dir(self) -> Path:
        return self.directory

    def _finish(self, header: LayerHeader) -> np.ndarray:
        return np.load(self._path(header), mmap_mode="r")
