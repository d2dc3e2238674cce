"""A client with none of our code: it learns the service from reflection, as grpcurl or a Go
or Java client generated from the .proto would, and calls it with plain protobuf messages."""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICE = "neural_attn.v1.AttentionService"
SOURCE = """
network Generic {
  input: (5, 8)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=8)
}
"""


def _pool_from_reflection(channel: grpc.Channel) -> descriptor_pool.DescriptorPool:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    pool = descriptor_pool.DescriptorPool()
    for response in stub.ServerReflectionInfo(iter([request])):
        for raw in response.file_descriptor_response.file_descriptor_proto:
            pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
    return pool


def test_a_reflection_only_client_compiles_and_streams(server_target):
    channel = grpc.insecure_channel(server_target)
    pool = _pool_from_reflection(channel)
    service = pool.FindServiceByName(SERVICE)
    classes = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"neural_attn.v1.{name}"))
        for name in ("CompileRequest", "CompileResponse", "ExtractRequest", "AttentionChunk")
    }
    assert {m.name for m in service.methods} >= {"Compile", "ExtractAttention", "Analyze"}

    compile_call = channel.unary_unary(
        f"/{SERVICE}/Compile",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=classes["CompileResponse"].FromString,
    )
    request = classes["CompileRequest"](source=SOURCE, backend=2)  # 2 = PYTORCH in the enum
    response = compile_call(request, timeout=60)
    assert response.attention_layers == ["transformer_encoder_0"]

    # raw little-endian float32 bytes, C order: what any language can write
    data = np.arange(2 * 5 * 8, dtype="<f4").reshape(2, 5, 8) / 40.0
    extract = classes["ExtractRequest"](model_id=response.model_id)
    extract.input.dtype = 1  # FLOAT32
    extract.input.shape.extend(data.shape)
    extract.input.content = data.tobytes()
    stream = channel.unary_stream(
        f"/{SERVICE}/ExtractAttention",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=classes["AttentionChunk"].FromString,
    )
    chunks = list(stream(extract, timeout=60))
    assert len(chunks) == 1 and chunks[0].layer_name == "transformer_encoder_0"
    attention = np.frombuffer(chunks[0].content, dtype="<f4").reshape(tuple(chunks[0].shape))
    assert attention.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)


def test_a_reflection_only_client_exports_weights_with_its_own_request(server_target):
    channel = grpc.insecure_channel(server_target)
    pool = _pool_from_reflection(channel)
    method = pool.FindServiceByName(SERVICE).methods_by_name["ExportWeights"]
    assert method.input_type.full_name == "neural_attn.v1.ExportWeightsRequest"
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    export = channel.unary_unary(
        f"/{SERVICE}/ExportWeights",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=reply_class.FromString,
    )
    request = request_class(format=5)  # 5 = SAFETENSORS in the enum
    request.model.source = SOURCE
    request.model.backend = 2  # PYTORCH
    reply = export(request, timeout=60)
    header_size = int.from_bytes(reply.content[:8], "little")  # the safetensors layout
    assert b"transformer_encoder_0/" in reply.content[8 : 8 + header_size]
    assert reply.model_id
