"""The committed stubs are what `make proto` writes from protos/ (never edited by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_fresh(tmp_path):
    proto = "protos/neural_attn/v1/attention.proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            proto,
        ],
        cwd=ROOT,
        check=True,
    )
    for name in ("attention_pb2.py", "attention_pb2.pyi", "attention_pb2_grpc.py"):
        fresh = (tmp_path / "neural_attn" / "v1" / name).read_text()
        committed = (ROOT / "neural_attn" / "v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto`"


def test_wire_contract_names():
    from neural_attn.v1 import attention_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["AttentionService"]
    assert pb.DESCRIPTOR.package == "neural_attn.v1"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {
        "Compile",
        "ExtractAttention",
        "Analyze",
        "ExportWeights",
        "GetServerInfo",
        "AnalyzeHeads",
        "HeadSimilarity",
        "AblateHeads",
        "ProfileHeads",
        "CompareCheckpoints",
    }
    assert methods["ExtractAttention"].server_streaming
    assert methods["AblateHeads"].server_streaming  # progress, then the result
    assert methods["ProfileHeads"].client_streaming and methods["ProfileHeads"].server_streaming
    assert not methods["Compile"].server_streaming
    export = methods["ExportWeights"]
    assert export.input_type.name == "ExportWeightsRequest"
    assert [f.name for f in export.input_type.fields] == ["model", "format"]
    # export_format left CompileRequest (only ExportWeights read it); its number stays reserved
    assert "export_format" not in pb.CompileRequest.DESCRIPTOR.fields_by_name
    assert 7 not in pb.CompileRequest.DESCRIPTOR.fields_by_number
    tensor = pb.Tensor.DESCRIPTOR.fields_by_name
    assert tensor["content"].type == tensor["content"].TYPE_BYTES  # raw bytes, never floats
