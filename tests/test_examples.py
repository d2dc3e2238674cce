"""The shipped examples do what their comments say, through the real server, in both backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "attention_examples"
sys.path.insert(0, str(EXAMPLES))

from generate_sample_data import generate  # noqa: E402

EXPECTED = {
    # file: (input file from generate_sample_data, {layer: attention shape})
    "basic_transformer.neural": ("basic_input.npy", {"transformer_encoder_0": (1, 4, 50, 50)}),
    "multi_layer_transformer.neural": (
        "multi_layer_input.npy",
        {f"transformer_encoder_{i}": (2, 8, 128, 128) for i in range(3)},
    ),
    "text_classification.neural": (
        "text_token_ids.npy",
        {"transformer_encoder_0": (1, 4, 32, 32), "multi_head_attention_0": (1, 2, 32, 32)},
    ),
}


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("backend", ["tensorflow", "pytorch"])
@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_compiles_and_serves_the_documented_shapes(client, sample_data, example, backend):
    data_file, shapes = EXPECTED[example]
    model = client.compile_file(EXAMPLES / example, backend=backend)
    assert model.attention_layers == tuple(shapes)
    attention = dict(client.extract_attention(model, np.load(sample_data[data_file])))
    for name, shape in shapes.items():
        assert attention[name].shape == shape
        np.testing.assert_allclose(attention[name].sum(-1), 1.0, atol=1e-5)


def test_example_output_classes():
    from neural_attn.dsl import compile_file

    classes = {name: compile_file(EXAMPLES / name).output_shape for name in EXPECTED}
    assert classes == {
        "basic_transformer.neural": (5,),
        "multi_layer_transformer.neural": (20,),
        "text_classification.neural": (3,),
    }
    assert compile_file(EXAMPLES / "basic_transformer.neural").input_shape == (50, 256)
    assert compile_file(EXAMPLES / "multi_layer_transformer.neural").input_shape == (128, 512)


def test_generated_tokens_match_the_ids(sample_data):
    ids = np.load(sample_data["text_token_ids.npy"])
    tokens = sample_data["text_tokens.txt"].read_text().strip().split(",")
    assert ids.shape == (1, len(tokens)) and ids.dtype == np.int64 and ids.min() >= 1


@pytest.mark.slow
def test_python_api_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "visualize_attention_demo.py"), "--output-dir", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformer_encoder_0: (1, 4, 50, 50)" in result.stdout
    assert "multi_head_attention_0: (1, 2, 32, 32), rows sum to 1.0000" in result.stdout
    out = tmp_path / "out"
    for name in (
        "basic_tensorflow/attention_heatmap.png",
        "basic_tensorflow/analysis.json",
        "text_pytorch_head1.png",
        "text_pytorch_heads.png",
        "text_pytorch.html",
    ):
        assert (out / name).stat().st_size > 1000, name
