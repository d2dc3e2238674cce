"""The imported numbers, without a server or a framework: the neutral weights run through the
tests' numpy blocks (tests/backends/reference.py) give transformers' eager attention, per family.

This pins the mapping itself (a transposed kernel, a swapped gain and bias, RoBERTa's position
offset, BERT's folded token type); tests/test_pretrained.py checks the served models.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hf_checkpoints import bert, distilbert, gpt2, hf_attention, roberta

from neural_attn.client import _safetensors
from neural_attn.client._checkpoint import import_checkpoint

_spec = importlib.util.spec_from_file_location(
    "reference", Path(__file__).parents[1] / "backends" / "reference.py"
)
reference: Any = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(reference)  # type: ignore[union-attr]


def numpy_attention(out: Path, ids: np.ndarray) -> list[np.ndarray]:
    """Every attention layer's probabilities (batch, heads, q, k) of the imported model."""
    from neural_attn.dsl import compile_file

    network = compile_file(out / "model.neural")
    w = {
        k: np.asarray(v, np.float64)
        for k, v in _safetensors.read(out / "model.safetensors").items()
    }
    x: np.ndarray = ids
    probs = []
    for layer in network.layers:
        if layer.type == "Embedding":
            x = w[f"{layer.name}/embeddings"][x]
        elif layer.type == "PositionalEncoding":
            x = x + w[f"{layer.name}/embeddings"][: x.shape[1]]
        elif layer.type == "LayerNormalization":
            gamma, beta = w[f"{layer.name}/gamma"], w[f"{layer.name}/beta"]
            x = reference.layer_norm(x, gamma, beta, layer["epsilon"])
        elif layer.type in ("TransformerEncoder", "TransformerDecoder"):
            x, p = reference.encoder(
                x,
                w,
                f"{layer.name}/",
                causal=layer.type == "TransformerDecoder",
                activation=layer.get("activation", "relu"),
                norm_first=layer.get("norm_first", False),
                epsilon=layer.get("epsilon", 1e-6),
            )
            probs.append(p)
        else:
            raise AssertionError(f"an imported model has no {layer.type}")
    return probs


@pytest.mark.parametrize("family", [bert, roberta, distilbert, gpt2])
def test_imported_attention_equals_transformers(tmp_path: Path, family: Any) -> None:
    source = family(tmp_path / "ckpt")
    import_checkpoint(source, tmp_path / "out")
    # No pad ids: RoBERTa's positions are exact for unpadded input (the header says so).
    ids = np.random.default_rng(0).integers(3, 90, size=(2, 11))
    ours = numpy_attention(tmp_path / "out", ids)
    theirs = hf_attention(source, ids)
    assert len(ours) == len(theirs) == 2
    for got, want in zip(ours, theirs, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        if family is gpt2:
            assert np.all(got[..., np.triu_indices(11, 1)[0], np.triu_indices(11, 1)[1]] == 0)
