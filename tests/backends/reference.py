"""An independent numpy implementation of the documented blocks, from neutral weights.

Used by tests to check served attention against softmax(Q K^T / sqrt(d_k)) computed here.
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(
    x: np.ndarray, w: dict[str, np.ndarray], prefix: str, *, causal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Self-attention of x (batch, seq, d): returns (output, probs (batch, heads, q, k))."""
    x = x.astype(np.float64)
    q = (
        np.einsum("bsd,dhk->bhsk", x, w[prefix + "query_kernel"])
        + w[prefix + "query_bias"][None, :, None, :]
    )
    k = (
        np.einsum("bsd,dhk->bhsk", x, w[prefix + "key_kernel"])
        + w[prefix + "key_bias"][None, :, None, :]
    )
    v = (
        np.einsum("bsd,dhk->bhsk", x, w[prefix + "value_kernel"])
        + w[prefix + "value_bias"][None, :, None, :]
    )
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if causal:
        seq = x.shape[1]
        scores = np.where(np.tril(np.ones((seq, seq), dtype=bool)), scores, -np.inf)
    probs = softmax(scores)
    out = (
        np.einsum("bhsk,hkd->bsd", probs @ v, w[prefix + "output_kernel"])
        + w[prefix + "output_bias"]
    )
    return out, probs


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def encoder(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """The documented post-norm block with a ReLU feed-forward; returns (output, probs)."""
    a, probs = attention(x, w, prefix + "attention/")
    x = layer_norm(
        x + a, w[prefix + "attention_norm/gamma"], w[prefix + "attention_norm/beta"], 1e-6
    )
    f = np.maximum(x @ w[prefix + "ffn_1/kernel"] + w[prefix + "ffn_1/bias"], 0.0)
    f = f @ w[prefix + "ffn_2/kernel"] + w[prefix + "ffn_2/bias"]
    x = layer_norm(x + f, w[prefix + "ffn_norm/gamma"], w[prefix + "ffn_norm/beta"], 1e-6)
    return x, probs
