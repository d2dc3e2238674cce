"""Small Hugging Face checkpoints for the import tests, built offline from a config.

Every tensor is re-randomized after construction (norm gains around 1, biases and weights well
away from zero), so a swapped gain and bias, a missing bias or a transposed kernel changes the
attention; a freshly initialised model (gains exactly 1, biases 0) would hide all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def rerandomize(model: Any, seed: int = 0) -> None:
    """Every parameter drawn again: gains 1 +- 0.2, everything else N(0, 0.2) plus an offset."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            is_gain = name.endswith(
                (
                    "LayerNorm.weight",
                    "layer_norm.weight",
                    "ln_1.weight",
                    "ln_2.weight",
                    "ln_f.weight",
                    "layernorm.weight",
                )
            )
            if is_gain:
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)


def save(model: Any, path: Path, seed: int = 0) -> Path:
    rerandomize(model, seed)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    return path


def bert(path: Path, **config: Any) -> Path:
    """A 2-layer BERT, key size 12 (4 heads x 12 = 48), epsilon 1e-12."""
    from transformers import BertConfig, BertModel

    options = dict(
        vocab_size=120,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )
    options.update(config)
    return save(BertModel(BertConfig(**options)), path)


def gpt2(path: Path, **config: Any) -> Path:
    """A 2-layer GPT-2 (LM head, tied), 4 heads of 8."""
    from transformers import GPT2Config, GPT2LMHeadModel

    options = dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    options.update(config)
    return save(GPT2LMHeadModel(GPT2Config(**options)), path, seed=1)


def hf_attention(path: Path, ids: np.ndarray) -> list[np.ndarray]:
    """transformers' own eager attention of the saved checkpoint: per layer (batch, heads, q, k)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.as_tensor(ids), output_attentions=True)
    return [a.numpy() for a in out.attentions]


def roberta(path: Path) -> Path:
    """A 2-layer RoBERTa (positions counted from pad_token_id + 1)."""
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(
        vocab_size=120,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=66,
        type_vocab_size=1,
    )
    return save(RobertaModel(config), path, seed=2)


def distilbert(path: Path) -> Path:
    """A 2-layer DistilBERT."""
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(
        vocab_size=120, dim=48, n_layers=2, n_heads=4, hidden_dim=96, max_position_embeddings=64
    )
    return save(DistilBertModel(config), path, seed=3)
