"""The framework-neutral weight layout (`backends.weights`) onto PyTorch tensors and back.

Keras layouts become torch's: a kernel (in, out) is a Linear weight (out, in), a convolution
kernel (k.., in, out) is (out, in, k..), and a GRU's gates go from Keras's z, r, h to torch's
r, z, n with its (2, 3u) bias split into bias_ih and bias_hh.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neural_attn.dsl.ir import Layer

Tensors = torch.Tensor | tuple[torch.Tensor, ...]
Arrays = np.ndarray | tuple[np.ndarray, ...]
_GRU_GATES = [1, 0, 2]  # Keras z, r, h <-> torch r, z, n (its own inverse)


def _gru_gates(value: np.ndarray) -> np.ndarray:
    """Reorder the gate blocks of the last axis between Keras's and torch's order."""
    blocks = value.reshape(*value.shape[:-1], 3, value.shape[-1] // 3)
    return blocks[..., _GRU_GATES, :].reshape(value.shape)


# Neutral layout -> torch layout and back. A kernel (in, out) is a Linear weight (out, in).
def to_torch(kind: str, param: str, value: np.ndarray) -> Arrays:
    if kind in ("Conv1D", "Conv2D") and param == "kernel":  # (k.., in, out) -> (out, in, k..)
        return np.transpose(value, (value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)))
    if kind == "GRU":
        value = _gru_gates(value)
        return (value[0], value[1]) if param == "bias" else value.T
    if param.endswith(("query_kernel", "key_kernel", "value_kernel")):  # (d, heads, key_dim)
        return value.reshape(value.shape[0], -1).T
    if param.endswith("kernel"):  # (in, out) or the attention output's (heads, key_dim, d)
        return value.reshape(-1, value.shape[-1]).T
    return value.reshape(-1) if param.endswith("bias") else value


def from_torch(kind: str, param: str, value: Arrays, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, tuple):  # GRU bias: (bias_ih, bias_hh)
        return _gru_gates(np.stack(value)).reshape(shape)
    if kind in ("Conv1D", "Conv2D") and param == "kernel":
        return np.ascontiguousarray(np.transpose(value, (*range(2, value.ndim), 1, 0)))
    if kind == "GRU":
        return np.ascontiguousarray(_gru_gates(value.T))
    if param.endswith("kernel"):
        return np.ascontiguousarray(value.T).reshape(shape)
    return value.reshape(shape)


def _parameters(layer: Layer, block: Any) -> dict[str, Tensors]:
    """Neutral parameter name -> torch parameter(s), for one layer (not a residual block)."""

    def attention(prefix: str, sa: Any) -> dict[str, Tensors]:
        out: dict[str, Tensors] = {}
        for part in ("query", "key", "value", "output"):
            linear = getattr(sa, part)
            out[f"{prefix}{part}_kernel"] = linear.weight
            if linear.bias is not None:
                out[f"{prefix}{part}_bias"] = linear.bias
        return out

    def dense(prefix: str, d: Any) -> dict[str, Tensors]:
        linear = d.linear
        bias = {f"{prefix}bias": linear.bias} if linear.bias is not None else {}
        return {f"{prefix}kernel": linear.weight, **bias}

    def norm(prefix: str, n: Any) -> dict[str, Tensors]:
        return {f"{prefix}gamma": n.weight, f"{prefix}beta": n.bias}

    kind = layer.type
    if kind in ("Conv1D", "Conv2D"):
        return {"kernel": block.conv.weight, "bias": block.conv.bias}
    if kind == "BatchNormalization":
        return {
            "gamma": block.gamma,
            "beta": block.beta,
            "moving_mean": block.moving_mean,
            "moving_variance": block.moving_variance,
        }
    if kind == "GRU":
        gru = block.gru
        return {
            "kernel": gru.weight_ih_l0,
            "recurrent_kernel": gru.weight_hh_l0,
            "bias": (gru.bias_ih_l0, gru.bias_hh_l0),
        }
    if kind in ("LSTM", "SimpleRNN"):
        return {"kernel": block.weight_ih, "recurrent_kernel": block.weight_hh, "bias": block.bias}
    if kind == "PositionalEncoding":
        return {"embeddings": block.embeddings} if layer["kind"] == "learned" else {}
    if kind in ("Dense", "Output"):
        return dense("", block)
    if kind == "Embedding":
        return {"embeddings": block.weight}
    if kind == "LayerNormalization":
        return norm("", block)
    if kind == "MultiHeadAttention":
        return attention("", block)
    if kind in ("TransformerEncoder", "TransformerDecoder"):
        return {
            **attention("attention/", block.attention),
            **norm("attention_norm/", block.attention_norm),
            **dense("ffn_1/", block.ffn_1),
            **dense("ffn_2/", block.ffn_2),
            **norm("ffn_norm/", block.ffn_norm),
        }
    return {}


def walk(layer: Layer, block: Any, prefix: str) -> dict[str, tuple[str, str, Tensors]]:
    """key -> (layer type, param, torch tensor(s)), into residual blocks' sub-layers."""
    if layer.type == "ResidualConnection":
        out: dict[str, tuple[str, str, Tensors]] = {}
        for child in layer.children:
            out.update(walk(child, block.layers[child.name], f"{prefix}{child.name}/"))
        return out
    return {
        f"{prefix}{param}": (layer.type, param, tensors)
        for param, tensors in _parameters(layer, block).items()
    }
