"""The chunk codec is plain protobuf: what it writes parses as an AttentionChunk, and it reads
chunks from any protobuf writer, content in place."""

from __future__ import annotations

import numpy as np
import pytest

from neural_attn import chunk_codec
from neural_attn.errors import InvalidInputError
from neural_attn.v1 import attention_pb2 as pb


def _header() -> pb.AttentionChunk:
    return pb.AttentionChunk(
        model_id="m" * 32,
        layer_name="transformer_encoder_1",
        layer_index=3,
        shape=[2, 4, 300, 300],
        dtype=pb.FLOAT32,
        offset=1234,
        element_count=5000,
        chunk_index=7,
        num_chunks=9,
        head=-1,
        reduction=pb.Reduction(source_shape=[2, 4, 900, 900], query_block=3, key_block=3),
    )


def test_what_the_server_writes_is_an_ordinary_attention_chunk():
    values = np.random.default_rng(0).random(5000, dtype=np.float32)
    wire = chunk_codec.encode(_header(), values).data
    parsed = pb.AttentionChunk.FromString(wire)
    expected = _header()
    expected.content = values.tobytes()
    assert parsed == expected
    assert chunk_codec.encode(_header(), values).ByteSize() == expected.ByteSize()


@pytest.mark.parametrize("content_first", [False, True])
def test_the_client_reads_any_writer_s_chunk_with_the_content_in_place(content_first):
    values = np.arange(5000, dtype=np.float32)
    message = _header()
    message.content = values.tobytes()
    raw = message.SerializeToString()
    if content_first:  # another writer may order fields differently: field 8 first
        raw = pb.AttentionChunk(content=values.tobytes()).SerializeToString()
        raw += _header().SerializeToString()
    chunk, start, stop = chunk_codec.decode(raw)
    assert chunk == _header()
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32, offset=start, count=5000), values)
    assert stop - start == values.nbytes


@pytest.mark.parametrize("cut", [1, 5, 40, -3])
def test_a_truncated_chunk_is_refused(cut):
    raw = chunk_codec.encode(_header(), np.zeros(5000, np.float32)).data
    with pytest.raises(InvalidInputError, match="malformed attention chunk"):
        chunk_codec.decode(raw[:cut])
