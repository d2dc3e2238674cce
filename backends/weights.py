"""Framework-neutral parameters: names, shapes and the seeded initialisation both backends load.

Every parameter is keyed ``"{layer_name}/{param}"`` (``param`` may itself hold a ``/`` for a
block's sub-layer, e.g. ``transformer_encoder_0/attention/query_kernel``). Layouts follow Keras:
a dense kernel is ``(in, out)``, an attention query kernel ``(d_model, heads, key_dim)``, the
attention output kernel ``(heads, key_dim, d_model)``. Each backend maps these onto its own
tensors, so the same seed gives the same model in TensorFlow and PyTorch.

Initialisation (documented, the same everywhere): kernels Glorot-uniform over (fan_in, fan_out),
biases and LayerNorm beta zero, LayerNorm gamma one, embeddings N(0, 1).
"""

from __future__ import annotations

import hashlib

import numpy as np

from neural_attn.dsl.ir import Layer, Network

WeightShapes = dict[str, tuple[int, ...]]


def _dense(prefix: str, fan_in: int, units: int, use_bias: bool = True) -> WeightShapes:
    shapes: WeightShapes = {f"{prefix}kernel": (fan_in, units)}
    if use_bias:
        shapes[f"{prefix}bias"] = (units,)
    return shapes


def _norm(prefix: str, width: int) -> WeightShapes:
    return {f"{prefix}gamma": (width,), f"{prefix}beta": (width,)}


def _attention(prefix: str, d_model: int, heads: int, key_dim: int, use_bias: bool) -> WeightShapes:
    shapes: WeightShapes = {}
    for part in ("query", "key", "value"):
        shapes[f"{prefix}{part}_kernel"] = (d_model, heads, key_dim)
        if use_bias:
            shapes[f"{prefix}{part}_bias"] = (heads, key_dim)
    shapes[f"{prefix}output_kernel"] = (heads, key_dim, d_model)
    if use_bias:
        shapes[f"{prefix}output_bias"] = (d_model,)
    return shapes


def layer_weight_shapes(layer: Layer) -> WeightShapes:
    """The parameters of one layer, in a fixed order, without the layer-name prefix."""
    width = layer.input_shape[-1] if layer.input_shape else None
    kind = layer.type
    if kind in ("Dense", "Output"):
        assert width is not None
        return _dense("", width, layer["units"], layer.get("use_bias", True))
    if kind == "Embedding":
        return {"embeddings": (layer["input_dim"], layer["output_dim"])}
    if kind == "LayerNormalization":
        assert width is not None
        return _norm("", width)
    if kind == "MultiHeadAttention":
        assert width is not None
        return _attention(
            "", width, layer["num_heads"], layer["key_dim"], layer.get("use_bias", True)
        )
    if kind == "TransformerEncoder":
        assert width is not None
        heads = layer["num_heads"]
        return {
            **_attention("attention/", width, heads, width // heads, True),
            **_norm("attention_norm/", width),
            **_dense("ffn_1/", width, layer["ff_dim"]),
            **_dense("ffn_2/", layer["ff_dim"], width),
            **_norm("ffn_norm/", width),
        }
    return {}


def weight_shapes(network: Network) -> WeightShapes:
    """Every parameter of the network, keyed ``layer/param``, in layer order."""
    return {
        f"{layer.name}/{param}": shape
        for layer in network.layers
        for param, shape in layer_weight_shapes(layer).items()
    }


def _rng_for(seed: int, key: str) -> np.random.Generator:
    # One stream per parameter: adding a layer never changes the weights of the others.
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


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
        elif param == "gamma":
            value = np.ones(shape)
        else:  # biases, beta
            value = np.zeros(shape)
        weights[key] = value.astype(np.float32)
    return weights


def _fans(param: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if param == "output_kernel":  # (heads, key_dim, d_model)
        return shape[0] * shape[1], shape[2]
    if len(shape) == 3:  # (d_model, heads, key_dim)
        return shape[0], shape[1] * shape[2]
    return shape[0], shape[1]
