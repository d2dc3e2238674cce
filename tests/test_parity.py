"""Parity: with the same weights, TensorFlow and PyTorch serve the same attention (1e-5) for
every attention-bearing corpus model and example, through the real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent
FILES = sorted((ROOT / "data" / "corpus").glob("*.neural")) + sorted(
    (ROOT.parent / "examples" / "attention_examples").glob("*.neural")
)


def _has_attention(path: Path) -> bool:
    from neural_attn.dsl import compile_file
    from neural_attn.errors import DSLError

    try:
        return bool(compile_file(path).attention_layers)
    except DSLError:
        return False


ATTENTION_FILES = [p for p in FILES if _has_attention(p)]


def test_the_corpus_has_attention_models_to_compare():
    names = {p.name for p in ATTENTION_FILES}
    assert {
        "transformer.neural",
        "lambda_sec_transformer.neural",
        "lambda_sec_Newton.neural",
        "basic_transformer.neural",
        "multi_layer_transformer.neural",
        "text_classification.neural",
    } <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", ATTENTION_FILES, ids=lambda p: p.name)
def test_both_backends_serve_the_same_attention(client, path):
    tf_model = client.compile_file(path, backend="tensorflow", seed=3)
    pt_model = client.compile_file(path, backend="pytorch", seed=3)
    assert tf_model.attention_layers == pt_model.attention_layers
    # the server's sample input is a function of the model and seed, not of the backend;
    # dynamic lengths get 24 positions
    tf_attention = dict(client.extract_attention(tf_model, sequence_length=24))
    pt_attention = dict(client.extract_attention(pt_model, sequence_length=24))
    assert list(tf_attention) == list(tf_model.attention_layers)
    for name, expected in pt_attention.items():
        np.testing.assert_allclose(tf_attention[name], expected, atol=1e-5, err_msg=name)
