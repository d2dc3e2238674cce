"""Plain-framework encoder stacks with no project code: the floor of "a forward pass that
materializes attention". Same shape as `TransformerEncoder(num_heads, ff_dim) * L`
at width d: post-norm blocks, attention -> add & norm -> Dense(ff, relu) -> Dense(d) -> add & norm.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Forward = Callable[[], list[np.ndarray]]


def torch_floor(
    data: np.ndarray, *, layers: int, heads: int, ff: int, device: str = "cpu"
) -> Forward:
    """`torch.nn.MultiheadAttention(need_weights=True, average_attn_weights=False)` blocks;
    the call returns every layer's per-head probabilities as numpy."""
    import torch
    from torch import nn

    width = data.shape[-1]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(width, heads, batch_first=True)
            self.norm1 = nn.LayerNorm(width, eps=1e-6)
            self.ff1 = nn.Linear(width, ff)
            self.ff2 = nn.Linear(ff, width)
            self.norm2 = nn.LayerNorm(width, eps=1e-6)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a, w = self.mha(x, x, x, need_weights=True, average_attn_weights=False)
            x = self.norm1(x + a)
            x = self.norm2(x + self.ff2(torch.relu(self.ff1(x))))
            return x, w

    torch.manual_seed(0)
    blocks = nn.ModuleList(Block() for _ in range(layers)).to(device).eval()

    def forward() -> list[np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(data).to(device)
            out = []
            for block in blocks:
                x, w = block(x)
                out.append(w.cpu().numpy())
            x.cpu().numpy()
        return out

    return forward


def keras_floor(data: np.ndarray, *, layers: int, heads: int, ff: int) -> Forward:
    """Keras 3 `MultiHeadAttention(...)(x, x, return_attention_scores=True)` blocks in one
    functional model, called in inference mode through one `tf.function` (the fast way to call
    a Keras model on TensorFlow: an eager call spends most of a short pass in Python, which
    would flatter any ratio against it); returns every layer's scores as numpy."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    width = data.shape[-1]
    inputs = keras.Input(shape=data.shape[1:], dtype="float32")
    x = inputs
    scores = []
    for _ in range(layers):
        a, s = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=width // heads)(
            x, x, return_attention_scores=True
        )
        x = keras.layers.LayerNormalization(epsilon=1e-6)(x + a)
        f = keras.layers.Dense(width)(keras.layers.Dense(ff, activation="relu")(x))
        x = keras.layers.LayerNormalization(epsilon=1e-6)(x + f)
        scores.append(s)
    model = keras.Model(inputs, [x, *scores])
    call = tf.function(lambda t: model(t, training=False))
    tensor = tf.constant(data)

    def forward() -> list[np.ndarray]:
        out = call(tensor)
        return [keras.ops.convert_to_numpy(s) for s in out[1:]]

    return forward
