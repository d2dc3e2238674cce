"""An independent numpy implementation of the documented blocks, from neutral weights.

Used by tests to check served attention against softmax(Q K^T / sqrt(d_k)) computed here.
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(
    x: np.ndarray,
    w: dict[str, np.ndarray],
    prefix: str,
    *,
    causal: bool = False,
    keys_ok: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Self-attention of x (batch, seq, d): returns (output, probs (batch, heads, q, k)).

    Masked keys (`causal`, `keys_ok` False) get probability 0; the softmax runs over the
    allowed keys only, and a row with none allowed is all 0.
    """
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
    allowed = np.ones(scores.shape, dtype=bool)
    if causal:
        allowed &= np.tril(np.ones(scores.shape[-2:], dtype=bool))
    if keys_ok is not None:
        allowed &= keys_ok[:, None, None, :]
    with np.errstate(invalid="ignore"):
        probs = np.nan_to_num(np.where(allowed, softmax(np.where(allowed, scores, -np.inf)), 0.0))
    out = (
        np.einsum("bhsk,hkd->bsd", probs @ v, w[prefix + "output_kernel"])
        + w[prefix + "output_bias"]
    )
    return out, probs


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU, x * Phi(x), with erf from math (numpy has none)."""
    import math

    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0.0), "gelu": gelu, "gelu_tanh": gelu_tanh}


def encoder(
    x: np.ndarray,
    w: dict[str, np.ndarray],
    prefix: str,
    *,
    causal: bool = False,
    activation: str = "relu",
    norm_first: bool = False,
    epsilon: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """The documented block (post-norm, or pre-norm with `norm_first`); returns (output, probs).

    With causal=True it is the TransformerDecoder block."""

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, w[f"{prefix}{name}/gamma"], w[f"{prefix}{name}/beta"], epsilon)

    def ffn(x: np.ndarray) -> np.ndarray:
        f = ACTIVATIONS[activation](x @ w[prefix + "ffn_1/kernel"] + w[prefix + "ffn_1/bias"])
        return f @ w[prefix + "ffn_2/kernel"] + w[prefix + "ffn_2/bias"]

    if norm_first:
        a, probs = attention(norm(x, "attention_norm"), w, prefix + "attention/", causal=causal)
        x = x + a
        return x + ffn(norm(x, "ffn_norm")), probs
    a, probs = attention(x, w, prefix + "attention/", causal=causal)
    x = norm(x + a, "attention_norm")
    return norm(x + ffn(x), "ffn_norm"), probs


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def same_pads(n: int, k: int, s: int) -> tuple[int, int, int]:
    """TensorFlow's "same": (output size, padding before, padding after)."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def conv2d(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, strides: tuple[int, int], padding: str
) -> np.ndarray:
    """x (batch, H, W, C), Keras kernel (kh, kw, C, filters); a plain loop over output cells."""
    kh, kw = kernel.shape[:2]
    (sh, sw), (_, h, wd, _) = strides, x.shape
    if padding == "same":
        oh, top, bottom = same_pads(h, kh, sh)
        ow, left, right = same_pads(wd, kw, sw)
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            out[:, i, j] = np.einsum("bhwc,hwcf->bf", patch, kernel) + bias
    return out


def average_pool2d_same(
    x: np.ndarray, size: tuple[int, int], strides: tuple[int, int]
) -> np.ndarray:
    """Keras AveragePooling2D(padding="same"): the mean over the window's real cells only."""
    (_, h, wd, c), (kh, kw), (sh, sw) = x.shape, size, strides
    oh, top, _ = same_pads(h, kh, sh)
    ow, left, _ = same_pads(wd, kw, sw)
    out = np.zeros((x.shape[0], oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * sh - top, j * sw - left
            window = x[:, max(r0, 0) : r0 + kh, max(c0, 0) : c0 + kw, :]
            out[:, i, j] = window.mean(axis=(1, 2))
    return out


def lstm(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras LSTM (gates i, f, c, o), zero initial state; returns every step's h."""
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    c = np.zeros_like(h)
    steps = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = (z[:, n * units : (n + 1) * units] for n in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        steps.append(h)
    return np.stack(steps, axis=1)


def gru(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras 3 GRU, reset_after=True (gates z, r, h; bias rows input, recurrent)."""
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    steps = []
    for t in range(x.shape[1]):
        xi = x[:, t] @ kernel + bias[0]
        hi = h @ recurrent + bias[1]
        z = sigmoid(xi[:, :units] + hi[:, :units])
        r = sigmoid(xi[:, units : 2 * units] + hi[:, units : 2 * units])
        candidate = np.tanh(xi[:, 2 * units :] + r * hi[:, 2 * units :])
        h = z * h + (1 - z) * candidate
        steps.append(h)
    return np.stack(steps, axis=1)


def simple_rnn(
    x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    h = np.zeros((x.shape[0], recurrent.shape[0]))
    steps = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ kernel + h @ recurrent + bias)
        steps.append(h)
    return np.stack(steps, axis=1)


def batch_norm(x: np.ndarray, w: dict[str, np.ndarray], prefix: str, eps: float) -> np.ndarray:
    scale = w[prefix + "gamma"] / np.sqrt(w[prefix + "moving_variance"] + eps)
    return (x - w[prefix + "moving_mean"]) * scale + w[prefix + "beta"]


def sinusoid(length: int, width: int) -> np.ndarray:
    """pe[p, 2i] = sin(p / 10000^(2i/width)), pe[p, 2i+1] = cos(p / 10000^(2i/width))."""
    pe = np.zeros((length, width))
    for p in range(length):
        for col in range(width):
            angle = p / 10000 ** (2 * (col // 2) / width)
            pe[p, col] = np.sin(angle) if col % 2 == 0 else np.cos(angle)
    return pe
