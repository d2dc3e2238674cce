"""Where streamed attention goes as its chunks arrive: one array in memory, an .npz or .npy files.

`AttentionClient.extract_layers(..., sink=...)` calls a sink's `begin` once per layer, `write`
for each chunk (at its flat C-order element offset), and `end` when the layer is complete;
what `end` returns is what the client yields for that layer. A sink never holds more than it
must: `ArraySink` fills one preallocated array per layer, `NpzSink` and `NpyDirSink` write each
chunk to disk and keep nothing. A long layer arrives tile by tile, each (item, head)'s rows of a
tile in turn, so its chunks come out of the file's order: the file sinks write each one at its
place in the file, and `end` refuses a layer with values missing.
"""

from __future__ import annotations

import bisect
import functools
import io
import os
import re
import struct
import zlib
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
    """Writes each layer as .npy bytes into a file, each chunk straight at its place
    (`os.pwrite`), in whatever order the chunks come: nothing is spooled or copied."""

    _checksum = False  # whether end() needs the CRC-32 of the layer's .npy bytes

    def __init__(self) -> None:
        self._fd: int | None = None
        self._header: LayerHeader | None = None
        self._data_at = 0  # where the layer's first element lies in the file
        self._pieces = _Pieces()

    def _open(self, header: LayerHeader, npy_header: bytes) -> tuple[int, int]:
        """The file descriptor to write into, and where `npy_header` begins in it."""
        raise NotImplementedError

    def _finish(self, header: LayerHeader, crc: int) -> Any:
        return None

    def begin(self, header: LayerHeader) -> None:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(
            buffer,
            {
                "descr": np.lib.format.dtype_to_descr(header.dtype),
                "fortran_order": False,
                "shape": header.shape,
            },
        )
        npy_header = buffer.getvalue()
        self._fd, at = self._open(header, npy_header)
        _pwrite(self._fd, npy_header, at)
        self._header, self._data_at = header, at + len(npy_header)
        self._pieces = _Pieces(zlib.crc32(npy_header) if self._checksum else None)

    def write(self, offset: int, values: np.ndarray) -> None:
        assert self._fd is not None and self._header is not None
        header = self._header
        if offset < 0 or offset + values.size > header.size:
            raise InvalidInputError(
                f"chunk of `{header.name}` at element {offset} lies outside the layer"
            )
        data = np.ascontiguousarray(values).data.cast("B")
        if not self._pieces.add(offset, values.size, data):
            raise InvalidInputError(
                f"chunk of `{header.name}` at element {offset} overlaps what arrived"
            )
        _pwrite(self._fd, data, self._data_at + offset * header.dtype.itemsize)

    def end(self) -> Any:
        assert self._fd is not None and self._header is not None
        header = self._header
        if self._pieces.elements != header.size:
            raise InvalidInputError(
                f"`{header.name}` ended with {self._pieces.elements} of its {header.size} "
                "values written"
            )
        crc = self._pieces.crc(header.dtype.itemsize)
        self._fd = None
        return self._finish(header, crc)


def _pwrite(fd: int, data: Any, at: int) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        done = os.pwrite(fd, view, at)
        view, at = view[done:], at + done


class _Pieces:
    """The chunks of one layer written so far, by element offset, each with its CRC-32 when
    `crc` starts one (the CRC of what precedes the elements): enough to refuse an overlap as
    it comes and to give the CRC of the whole once every element is there."""

    def __init__(self, crc: int | None = None) -> None:
        self._start_crc = crc
        self._starts: list[int] = []
        self._stops: list[int] = []
        self._crcs: list[int] = []
        self.elements = 0

    def add(self, offset: int, count: int, data: memoryview) -> bool:
        """Record elements [offset, offset + count); False when they overlap recorded ones."""
        i = bisect.bisect_right(self._starts, offset)
        if (i < len(self._starts) and self._starts[i] < offset + count) or (
            i > 0 and self._stops[i - 1] > offset
        ):
            return False
        self._starts.insert(i, offset)
        self._stops.insert(i, offset + count)
        if self._start_crc is not None:
            self._crcs.insert(i, zlib.crc32(data))
        self.elements += count
        return True

    def crc(self, itemsize: int) -> int:
        """The CRC-32 of the start and then every piece in order (0 when not kept)."""
        if self._start_crc is None:
            return 0
        crc = self._start_crc
        for start, stop, piece in zip(self._starts, self._stops, self._crcs, strict=True):
            crc = _crc32_combine(crc, piece, (stop - start) * itemsize)
        return crc


# CRC-32 of a concatenation from the parts' CRCs (zlib's crc32_combine, which Python's zlib
# does not expose). The CRC register is a vector over GF(2) and appending zero bytes is a
# linear map on it: a matrix given by its 32 columns, made once per length.
def _gf2_apply(matrix: tuple[int, ...], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_gf2_apply(a, column) for column in b)


@functools.lru_cache(maxsize=64)
def _zeros_operator(nbytes: int) -> tuple[int, ...]:
    """The map that appending `nbytes` zero bytes makes of a CRC-32 register."""
    power = (0xEDB88320, *(1 << i for i in range(31)))  # one zero bit (reflected polynomial)
    for _ in range(3):
        power = _gf2_compose(power, power)  # now one zero byte
    result = tuple(1 << i for i in range(32))  # identity
    while nbytes:
        if nbytes & 1:
            result = _gf2_compose(power, result)
        nbytes >>= 1
        if nbytes:
            power = _gf2_compose(power, power)
    return result


def _crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    return _gf2_apply(_zeros_operator(len2), crc1) ^ crc2 if len2 else crc1


class NpzSink(_FileSink):
    """Writes every layer into one uncompressed .npz as its chunks arrive (keyed by layer name).

    `np.load(path)[name]` reads it back like any .npz. Use as a context manager, or call
    `close()`: the archive's directory is written then. The archive is written here, not by
    `zipfile`, so that chunks can land at their place: a ZIP64 member, stored, per layer
    (sizes known from the first chunk; its CRC-32 set when the layer is complete).
    """

    _checksum = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed in close)
        self._members: list[_Member] = []
        self._open_member: _Member | None = None
        self._end = 0  # where the next member begins

    def _open(self, header: LayerHeader, npy_header: bytes) -> tuple[int, int]:
        assert self._file is not None
        size = len(npy_header) + header.size * header.dtype.itemsize
        member = _Member(f"{header.name}.npy".encode(), size, self._end)
        local = member.local_header()
        fd = self._file.fileno()
        _pwrite(fd, local, self._end)
        self._open_member = member
        return fd, self._end + len(local)

    def _finish(self, header: LayerHeader, crc: int) -> None:
        member, self._open_member = self._open_member, None
        assert member is not None and self._file is not None
        member.crc = crc
        _pwrite(self._file.fileno(), struct.pack("<I", crc), member.offset + 14)
        self._members.append(member)
        self._end = member.offset + len(member.local_header()) + member.size

    def close(self) -> None:
        """Write the directory of the complete layers (a layer cut short is left out)."""
        if self._file is None:
            return
        self._fd = self._open_member = None
        directory = b"".join(m.central_header() for m in self._members)
        tail = directory + _end_records(self._members, directory, self._end)
        _pwrite(self._file.fileno(), tail, self._end)
        self._file.truncate(self._end + len(tail))
        self._file.close()
        self._file = None

    def __enter__(self) -> NpzSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DOS_DATE = (2000 - 1980) << 9 | 1 << 5 | 1  # 2000-01-01, 00:00 (the time field is 0)
_NO_SIZE = 0xFFFFFFFF  # "see the ZIP64 extra field"
# zipfile's ZIP64_LIMIT: past it, readers that take offsets as signed fail
_SIGNED_LIMIT = (1 << 31) - 1


@dataclass
class _Member:
    """One stored ZIP64 member: name, size of its (uncompressed) bytes, where it begins."""

    name: bytes
    size: int
    offset: int
    crc: int = 0

    def _fields(self, extra: bytes) -> bytes:
        """What both headers share, from "version needed" to the extra field's length: ZIP64,
        stored, no flags, 2000-01-01, the CRC, sizes in the extra field."""
        fields = (45, 0, 0, 0, _DOS_DATE, self.crc, _NO_SIZE, _NO_SIZE, len(self.name), len(extra))
        return struct.pack("<HHHHHIIIHH", *fields)

    def local_header(self) -> bytes:
        extra = struct.pack("<HHQQ", 1, 16, self.size, self.size)
        return struct.pack("<I", 0x04034B50) + self._fields(extra) + self.name + extra

    def central_header(self) -> bytes:
        extra = struct.pack("<HHQQQ", 1, 24, self.size, self.size, self.offset)
        made_by = struct.pack("<IH", 0x02014B50, 3 << 8 | 45)  # Unix, ZIP 4.5
        # no comment, disk 0, no internal attributes, a -rw-r--r-- file, offset in the extra
        rest = struct.pack("<HHHII", 0, 0, 0, 0o100644 << 16, _NO_SIZE)
        return made_by + self._fields(extra) + rest + self.name + extra


def _end_records(members: list[_Member], directory: bytes, at: int) -> bytes:
    """The end of central directory record, after its ZIP64 record and locator when a count
    or an offset needs them (as zipfile writes it: an empty archive is the end record alone,
    which numpy's np.load recognises)."""
    count = len(members)
    sizes = (min(count, 0xFFFF),) * 2 + (min(len(directory), _NO_SIZE), min(at, _NO_SIZE))
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, *sizes, 0)
    if count < 0xFFFF and max(len(directory), at) < _SIGNED_LIMIT:
        return end
    zip64_end = struct.pack(
        "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(directory), at
    )
    locator = struct.pack("<IIQI", 0x07064B50, 0, at + len(directory), 1)
    return zip64_end + locator + end


class NpyDirSink(_FileSink):
    """Writes each layer to `{directory}/{layer}.npy` as its chunks arrive; `end` returns the
    file opened read-only with `mmap_mode="r"` (nothing is read until it is used)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = None

    def _path(self, header: LayerHeader) -> Path:
        return self.directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', header.name)}.npy"

    def _open(self, header: LayerHeader, npy_header: bytes) -> tuple[int, int]:
        self._file = open(self._path(header), "wb")  # noqa: SIM115 (closed in _finish)
        return self._file.fileno(), 0

    def _finish(self, header: LayerHeader, crc: int) -> np.ndarray:
        assert self._file is not None
        self._file.close()
        self._file = None
        return np.load(self._path(header), mmap_mode="r")
