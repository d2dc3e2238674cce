"""Golden files: tests/dsl/golden/X.neural compiles to exactly X.json (network_to_dict).

After an intended change, run ``python -m tests.dsl.regen_golden`` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neural_attn.dsl import compile_file, network_to_dict

GOLDEN = Path(__file__).parent / "golden"
SOURCES = sorted(GOLDEN.glob("*.neural"))


def test_there_are_golden_files():
    names = {p.stem for p in SOURCES}
    assert {"basic_transformer", "multi_layer_transformer", "text_classification"} <= names
    assert len(SOURCES) >= 5


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_golden(source):
    expected = json.loads(source.with_suffix(".json").read_text())
    actual = network_to_dict(compile_file(source))
    assert actual == expected
    # What the server hashes is stable from run to run.
    assert json.dumps(actual, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_basic_transformer_reads_as_documented():
    network = compile_file(GOLDEN / "basic_transformer.neural")
    assert network.input_shape == (50, 256)
    assert [layer.name for layer in network.attention_layers] == ["transformer_encoder_0"]
    encoder = network.layer("transformer_encoder_0")
    assert encoder.param_dict == {
        "num_heads": 4,
        "ff_dim": 512,
        "dropout": 0.1,
        "num_layers": 1,
        "activation": "relu",
        "use_attention_mask": False,
        "norm_first": False,
        "epsilon": 1e-6,
    }
    assert network.output_shape == (5,)
