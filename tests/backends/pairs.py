"""Build one network in both backends with the same random (non-trivial) neutral weights."""

from __future__ import annotations

import numpy as np

from neural_attn.backends.base import BuiltModel, get_backend
from neural_attn.dsl import compile_source
from neural_attn.dsl.ir import Network

BACKENDS = ("tensorflow", "pytorch")


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Every parameter random, so that zero biases or unit statistics hide no layout mistake."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = rng.normal(0.0, 0.5, size=shape)
        out[key] = value.astype(np.float32)
    return out


def build_pair(
    source: str, *, seed: int = 0
) -> tuple[Network, dict[str, BuiltModel], dict[str, np.ndarray]]:
    network = compile_source(source, filename="pair.neural")
    models = {b: get_backend(b).build(network, seed=seed, device="cpu") for b in BACKENDS}
    shapes = {k: v.shape for k, v in models["tensorflow"].get_weights().items()}
    weights = random_weights(shapes, seed + 1)
    for model in models.values():
        model.set_weights(weights)
    return network, models, weights
