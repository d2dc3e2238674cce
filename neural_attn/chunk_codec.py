"""AttentionChunk on the wire with one copy of its content on each side.

A chunk is mostly `content` (up to the chunk size of raw tensor bytes). Building the message
and then serializing it copies those bytes twice on the server; parsing it and reading
`.content` copies them twice more on the client. Here the server writes the small header
message and appends the content field itself (field 8, length-delimited: plain protobuf that
any client parses), and the client finds the content inside the received bytes and reads it
in place. Both sides still speak the `AttentionChunk` of the proto, field for field.
"""

from __future__ import annotations

from typing import Any

from neural_attn.errors import InvalidInputError
from neural_attn.v1 import attention_pb2 as pb

CONTENT_FIELD = pb.AttentionChunk.DESCRIPTOR.fields_by_name["content"].number
_CONTENT_KEY = bytes([CONTENT_FIELD << 3 | 2])  # field 8, wire type 2 (length-delimited)


class Serialized:
    """A message already in its wire form; the server's serializer passes it through."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def ByteSize(self) -> int:  # noqa: N802 - the protobuf message method it stands in for
        return len(self.data)


def pass_serialized(serializer: Any) -> Any:
    """A response serializer that sends `Serialized` messages as they are."""

    def serialize(message: Any) -> bytes:
        return message.data if isinstance(message, Serialized) else serializer(message)

    return serialize


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(header: pb.AttentionChunk, content: Any) -> Serialized:
    """`header` (every field but content) with `content` (a C-contiguous buffer) appended."""
    view = memoryview(content).cast("B")
    return Serialized(
        b"".join((header.SerializeToString(), _CONTENT_KEY, _varint(view.nbytes), view))
    )


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise InvalidInputError("a malformed attention chunk arrived (a varint runs out)")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode(raw: bytes) -> tuple[pb.AttentionChunk, int, int]:
    """The chunk's fields but `content`, and where `content` lies in `raw`: [start, stop).

    Works whatever the field order (any protobuf writer); the content is never copied.
    """
    header_parts: list[bytes] = []
    start = stop = 0
    pos = 0
    while pos < len(raw):
        begin = pos
        key, pos = _read_varint(raw, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(raw, pos)
        elif wire_type == 2:
            length, data = _read_varint(raw, pos)
            pos = data + length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise InvalidInputError(f"a malformed attention chunk arrived (wire type {wire_type})")
        if pos > len(raw):
            raise InvalidInputError("a malformed attention chunk arrived (a field runs out)")
        if field == CONTENT_FIELD and wire_type == 2:
            start, stop = data, pos  # the last occurrence wins, as in protobuf
        else:
            header_parts.append(raw[begin:pos])
    return pb.AttentionChunk.FromString(b"".join(header_parts)), start, stop
