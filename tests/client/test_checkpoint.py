"""`import`: what the folder it writes holds, and what it refuses (by name, with what to do)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hf_checkpoints import bert, gpt2

from neural_attn.client import _safetensors
from neural_attn.client._checkpoint import import_checkpoint
from neural_attn.errors import InvalidInputError


def _shapes_match(out: Path) -> None:
    """The .neural compiles and declares exactly the tensors the weights file holds."""
    from neural_attn.backends.weights import weight_shapes
    from neural_attn.dsl import compile_file

    network = compile_file(out / "model.neural")
    written = {k: tuple(v.shape) for k, v in _safetensors.read(out / "model.safetensors").items()}
    assert written == weight_shapes(network)


def test_bert_folder_report_and_header(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = import_checkpoint(bert(tmp_path / "bert"), out)
    _shapes_match(out)
    text = (out / "model.neural").read_text(encoding="utf-8")
    assert text.startswith("# Imported by `neural-attn-client import`")
    assert "epsilon=1e-12" in text and 'activation="gelu"' in text and "num_layers=2" in text
    assert "Dropped" in text and "pooler.dense" in text  # named, not silently lost
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["family"] == "bert" and saved["max_positions"] == 64
    assert {
        "from": "encoder.layer.0.attention.self.query.weight",
        "to": "transformer_encoder_0/attention/query_kernel",
        "how": "transposed, split by head",
    } in saved["mapping"]
    assert report.dropped == ["pooler.dense.bias", "pooler.dense.weight"]


def test_gpt2_is_a_pre_norm_decoder_and_sharded_files_read(tmp_path: Path) -> None:
    source = gpt2(tmp_path / "gpt2")
    # Re-shard the checkpoint by hand: two files and an index, as save_pretrained does.
    tensors = _safetensors.read(source / "model.safetensors")
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in halves.items():
        _safetensors.write(source / shard, {k: np.asarray(tensors[k]) for k in keys})
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (source / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (source / "model.safetensors").unlink()
    out = tmp_path / "out"
    import_checkpoint(source, out)
    _shapes_match(out)
    text = (out / "model.neural").read_text(encoding="utf-8")
    assert "TransformerDecoder(num_heads=4" in text and "norm_first=true" in text
    assert 'activation="gelu_tanh"' in text and "epsilon=1e-05" in text
    assert text.rstrip().endswith("LayerNormalization(epsilon=1e-05)\n}")
    assert "lm_head" not in text  # tied to wte, not stored


def test_bf16_reads_exactly_as_float32(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    top = (values.view(np.uint32) >> 16).astype("<u2")  # bf16: the top half of a float32
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "b.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + top.tobytes())
    expected = (top.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(_safetensors.read(path)["x"], expected)
    assert expected[0] == 1.0 and expected[1] == -2.5


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"position_embedding_type": "relative_key"}, "relative positions"),
        ({"model_type": "llama"}, "supported: bert, roberta, distilbert, gpt2"),
        ({"hidden_act": "quick_gelu"}, "no exact counterpart"),
        ({"add_cross_attention": True, "is_decoder": True}, "cross-attention"),
    ],
)
def test_what_no_mapping_represents_is_refused(tmp_path: Path, change: dict, says: str) -> None:
    source = bert(tmp_path / "bert")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(InvalidInputError, match=says):
        import_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out" / "model.neural").exists()


def test_pickled_weights_only_are_refused_with_the_way_out(tmp_path: Path) -> None:
    source = bert(tmp_path / "bert")
    (source / "model.safetensors").rename(source / "pytorch_model.bin")
    with pytest.raises(InvalidInputError, match="safe_serialization=True"):
        import_checkpoint(source, tmp_path / "out")


def test_gpt2_scaled_by_layer_is_refused(tmp_path: Path) -> None:
    source = gpt2(tmp_path / "gpt2", scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(InvalidInputError, match="scale_attn_by_inverse_layer_idx"):
        import_checkpoint(source, tmp_path / "out")


def test_import_runs_in_the_thin_client(tmp_path: Path) -> None:
    """The import itself loads no framework, no transformers and no lark."""
    import subprocess
    import sys

    source = bert(tmp_path / "bert")
    code = (
        "import sys; from neural_attn.client._checkpoint import import_checkpoint;"
        f"import_checkpoint({str(source)!r}, {str(tmp_path / 'out')!r});"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras', 'lark', 'transformers', "
        "'safetensors') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert (tmp_path / "out" / "model.safetensors").is_file()
