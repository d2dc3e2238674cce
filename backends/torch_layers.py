"""PyTorch building blocks of neural-attn models.

This file is self-contained on purpose (it imports only torch and math): the code generator
copies it verbatim into `compiled_model_pytorch.py`, so the model a user reads is the model we run.

Attention is computed explicitly as softmax(Q K^T / sqrt(key_dim)) so the per-head
probabilities exist as a tensor: `nn.TransformerEncoderLayer` calls attention with
need_weights=False and the fused SDPA path never materializes them.

TransformerEncoder block (the documented architecture, identical in the TensorFlow backend):
    a, p = SelfAttention(x)          # p: [batch, head, q, k]
    x = LayerNorm_1(x + Dropout(a))  # epsilon 1e-6
    f = Linear(d)(act(Linear(ff_dim)(x)))
    x = LayerNorm_2(x + Dropout(f))  # epsilon 1e-6
"""

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

ENCODER_NORM_EPSILON = 1e-6

ACTIVATIONS = {
    None: lambda x: x,
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "elu": F.elu,
    "selu": F.selu,
    "swish": F.silu,
    "silu": F.silu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),  # Keras 3's default slope
    "softplus": F.softplus,
    "softsign": F.softsign,
}


class Dense(nn.Module):
    """Linear layer plus a named activation, applied to the last axis (as Keras does)."""

    def __init__(self, in_features, units, activation=None, use_bias=True):
        super().__init__()
        self.linear = nn.Linear(in_features, units, bias=use_bias)
        self.activation = activation

    def forward(self, x):
        return ACTIVATIONS[self.activation](self.linear(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention returning its output and per-head probabilities."""

    def __init__(self, d_model, num_heads, key_dim, dropout=0.0, causal=False, use_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.causal = causal
        inner = num_heads * key_dim
        self.query = nn.Linear(d_model, inner, bias=use_bias)
        self.key = nn.Linear(d_model, inner, bias=use_bias)
        self.value = nn.Linear(d_model, inner, bias=use_bias)
        self.output = nn.Linear(inner, d_model, bias=use_bias)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, t):
        batch, length, _ = t.shape
        return t.view(batch, length, self.num_heads, self.key_dim).transpose(1, 2)

    def forward(self, x, attention_mask=None):
        """attention_mask: bool [batch, q, k], True where a key may be attended."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.key_dim)
        allowed = None
        if self.causal:
            length = x.shape[1]
            allowed = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        if attention_mask is not None:
            mask = attention_mask[:, None, :, :]
            allowed = mask if allowed is None else (allowed & mask)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # [batch, head, query, key]
        if allowed is not None:
            # A row with every key masked has no distribution; make it zero, not NaN.
            probs = torch.nan_to_num(probs, nan=0.0)
        context = torch.matmul(self.dropout(probs), v).transpose(1, 2).flatten(2)
        return self.output(context), probs


class TransformerEncoderBlock(nn.Module):
    """Post-norm transformer encoder block; see the module docstring."""

    def __init__(self, d_model, num_heads, ff_dim, dropout=0.1, activation="relu", causal=False):
        super().__init__()
        self.attention = SelfAttention(d_model, num_heads, d_model // num_heads, dropout, causal)
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(d_model, eps=ENCODER_NORM_EPSILON)
        self.ffn_1 = Dense(d_model, ff_dim, activation)
        self.ffn_2 = Dense(ff_dim, d_model)
        self.ffn_dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(d_model, eps=ENCODER_NORM_EPSILON)

    def forward(self, x, attention_mask=None):
        a, probs = self.attention(x, attention_mask)
        x = self.attention_norm(x + self.attention_dropout(a))
        x = self.ffn_norm(x + self.ffn_dropout(self.ffn_2(self.ffn_1(x))))
        return x, probs


class GlobalAveragePooling1D(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class GlobalMaxPooling1D(nn.Module):
    def forward(self, x):
        return x.amax(dim=1)


ATTENTION_BLOCKS = (SelfAttention, TransformerEncoderBlock)


class NeuralNet(nn.Module):
    """The layers of a .neural network, applied in order (names are the DSL's layer names).

    `run` is the one forward pass: with `capture` (a dict) it also stores the attention
    probabilities of every attention block under its name, shape [batch, head, q, k].
    `start` skips leading layers (an Embedding, when the input is already embedded).
    """

    def __init__(self, named_layers):
        super().__init__()
        self.blocks = nn.ModuleDict(named_layers)

    def run(self, x, *, capture=None, start=0, attention_mask=None):
        for name, block in list(self.blocks.items())[start:]:
            if isinstance(block, ATTENTION_BLOCKS):
                x, probs = block(x, attention_mask)
                if capture is not None:
                    capture[name] = probs
            else:
                x = block(x)
        return x

    def forward(self, x):
        return self.run(x)
