"""Framework-neutral parameters: names, shapes and the seeded initialisation both backends load.

Every parameter is keyed ``"{layer_name}/{param}"`` (``param`` may itself hold a ``/`` for a
block's sub-layer, e.g. ``transformer_encoder_0/attention/query_kernel``). Layouts follow Keras:
a dense kernel is ``(in, out)``, an attention query kernel ``(d_model, heads, key_dim)``, the
attention output kernel ``(heads, key_dim, d_model)``. Each backend maps these onto its own
tensors, so the same seed gives the same model in TensorFlow and PyTorch.

Layouts of the other layers (Keras 3's own):
- Conv1D kernel ``(k, in, filters)``, Conv2D kernel ``(kh, kw, in, filters)``, bias ``(filters,)``;
- BatchNormalization ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``, each
  ``(channels,)``;
- LSTM ``kernel (in, 4u)``, ``recurrent_kernel (u, 4u)``, ``bias (4u,)``, gates i, f, c, o;
- GRU (reset_after) ``kernel (in, 3u)``, ``recurrent_kernel (u, 3u)``, ``bias (2, 3u)`` (input
  bias, recurrent bias), gates z, r, h;
- SimpleRNN ``kernel (in, u)``, ``recurrent_kernel (u, u)``, ``bias (u,)``;
- TransformerDecoder: the encoder's parameters; learned PositionalEncoding ``embeddings
  (max_len, d)``;
- ResidualConnection: its sub-layers' parameters under their own names,
  ``residual_connection_0/conv2d_1/kernel``.

Each layer type's names and shapes are written once, in `backends.neutral.NEUTRAL`.

Initialisation (documented, the same everywhere): kernels (recurrent ones too) Glorot-uniform
over (fan_in, fan_out), a convolution's fans multiplied by its window; biases, beta and
moving means zero; gamma and moving variances one; embeddings N(0, 1).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from neural_attn.backends.neutral import WeightShapes, layer_weight_shapes, weight_shapes_of
from neural_attn.dsl.ir import Network

__all__ = [
    "WeightShapes",
    "initial_weights",
    "layer_weight_shapes",
    "parameter_count",
    "weight_shapes",
]


def weight_shapes(network: Network) -> WeightShapes:
    """Every parameter of the network, keyed ``layer/param``, in layer order."""
    return weight_shapes_of(network.layers)


def parameter_count(network: Network) -> int:
    """How many parameters the network has (the same in every backend)."""
    return sum(math.prod(shape) for shape in weight_shapes(network).values())


def _rng_for(seed: int, key: str) -> np.random.Generator:
    # One stream per parameter: adding a layer never changes the weights of the others.
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# How a parameter starts, by its name (the part after the last "/"): kernels Glorot-uniform,
# embeddings standard normal, these ones or zeros; any other name is refused, not guessed.
_ONES = ("gamma", "moving_variance")
_ZEROS = ("beta", "moving_mean")


def initial_weights(network: Network, seed: int) -> dict[str, np.ndarray]:
    """The seeded initial parameters (float32), identical for both backends."""
    weights: dict[str, np.ndarray] = {}
    for key, shape in weight_shapes(network).items():
        param = key.rsplit("/", 1)[-1]
        rng = _rng_for(seed, key)
        if param.endswith("kernel"):
            fan_in, fan_out = _fans(param, shape)
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            value = rng.uniform(-limit, limit, size=shape)
        elif param == "embeddings":
            value = rng.standard_normal(shape)
        elif param in _ONES:
            value = np.ones(shape)
        elif param in _ZEROS or param.endswith("bias"):
            value = np.zeros(shape)
        else:
            raise ValueError(
                f"no initialisation rule for parameter `{key}`: a new parameter name needs one "
                "in backends/weights.py (initial_weights)"
            )
        weights[key] = value.astype(np.float32)
    return weights


def _fans(param: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if param == "output_kernel":  # (heads, key_dim, d_model)
        return shape[0] * shape[1], shape[2]
    if param in ("query_kernel", "key_kernel", "value_kernel"):  # (d_model, heads, key_dim)
        return shape[0], shape[1] * shape[2]
    window = int(np.prod(shape[:-2]))  # a convolution's (k, in, out) or (kh, kw, in, out)
    return window * shape[-2], window * shape[-1]
