"""Each layer type builds in both backends with the same names, shapes, parameter counts and,
for the same neutral weights, the same outputs (atol 1e-5)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pairs import BACKENDS, build_pair

from neural_attn.backends.base import get_backend
from neural_attn.backends.weights import weight_shapes
from neural_attn.dsl import compile_source
from neural_attn.dsl.layers import ACTIVATIONS
from neural_attn.errors import DSLError, InvalidInputError

NETWORKS = {
    "conv2d": """
        input: (9, 10, 3)
        layers:
          Conv2D(4, (3, 3), strides=(2, 2), padding="same", activation="relu")
          Conv2D(5, (2, 3), strides=(1, 2), activation="tanh")
          Conv2D(3, 4, padding="same")
    """,
    "conv1d": """
        input: (11, 3)
        layers:
          Conv1D(4, 3, strides=2, padding="same", activation="gelu")
          Conv1D(2, 2)
          Conv1D(3, 4, padding="same", strides=3)
    """,
    "pooling2d": """
        input: (9, 11, 3)
        layers:
          MaxPooling2D((3, 3), strides=(2, 2), padding="same")
          AveragePooling2D((2, 3), padding="same")
          MaxPooling2D((2, 2))
    """,
    "average_pooling2d_same": """
        input: (7, 8, 2)
        layers:
          AveragePooling2D((3, 3), strides=(2, 2), padding="same")
          AveragePooling2D(2, strides=1)
    """,
    "pooling1d": """
        input: (13, 3)
        layers:
          AveragePooling1D(3, strides=2, padding="same")
          MaxPooling1D(2, padding="same")
          AveragePooling1D(2)
          MaxPooling1D(1)
    """,
    "global_pooling2d_average": """
        input: (5, 6, 3)
        layers:
          Conv2D(4, 2)
          GlobalAveragePooling2D()
    """,
    "global_pooling2d_max": """
        input: (5, 6, 3)
        layers:
          Conv2D(4, 2)
          GlobalMaxPooling2D()
    """,
    "batch_normalization": """
        input: (5, 5, 3)
        layers:
          BatchNormalization(epsilon=0.01)
          Conv2D(4, 3)
          BatchNormalization()
          Flatten()
          Dense(6)
          BatchNormalization(momentum=0.5, epsilon=0.2)
    """,
    # TensorFlow builds with two positions first: here that builds other variables (a
    # Flatten of 2 x 4 before the Dense, not 7 x 4), or fails (a kernel of 3 over 2 positions),
    # and the model is built again at its own length.
    "flatten_of_a_sequence": """
        input: (7, 5)
        layers:
          Dense(4)
          Flatten()
          Dense(3)
    """,
    "conv1d_flatten": """
        input: (7, 5)
        layers:
          Conv1D(4, 3)
          Flatten()
          Dense(2)
    """,
    "lstm": """
        input: (7, 5)
        layers:
          LSTM(6, return_sequences=true)
          LSTM(4)
    """,
    "gru": """
        input: (7, 5)
        layers:
          GRU(6, return_sequences=true)
          GRU(3)
    """,
    "simple_rnn": """
        input: (None, 5)
        layers:
          SimpleRNN(6, return_sequences=true)
          SimpleRNN(4)
    """,
    "residual_identity": """
        input: (6, 6, 3)
        layers:
          ResidualConnection {
            Conv2D(3, (3, 3), padding="same", activation="relu")
            Conv2D(3, (3, 3), padding="same")
          }
          Activation("relu")
          ResidualConnection {
            Dense(8, activation="relu")
            Dense(3)
          }
    """,
    "residual_projection": """
        input: (8, 8, 3)
        layers:
          ResidualConnection {
            Conv2D(6, (3, 3), strides=(2, 2), padding="same", activation="relu")
            Conv2D(6, (3, 3), padding="same")
            Conv2D(6, (1, 1), strides=(2, 2), padding="same")
          }
          Activation("relu")
          GlobalAveragePooling2D()
    """,
    "transformer_decoder": """
        input: (None, 8)
        layers:
          TransformerDecoder(num_heads=2, ff_dim=16, num_layers=2)
          Dense(3)
    """,
    "positional_encoding_sinusoidal": """
        input: (None, 7)
        layers:
          PositionalEncoding()
          Dense(4)
    """,
    "positional_encoding_learned": """
        input: (None, 8)
        layers:
          PositionalEncoding(max_len=12, kind="learned")
          TransformerEncoder(num_heads=2, ff_dim=8)
    """,
}


def _source(body: str) -> str:
    return f"network Pair {{\n{body}\n}}\n"


def _sample(network, rng: np.random.Generator, length: int = 10) -> np.ndarray:
    shape = tuple(length if d is None else d for d in network.input_shape)
    return rng.normal(0.0, 1.0, size=(3, *shape)).astype(np.float32)


def _names(model) -> list[str]:
    """Layer names as the framework holds them, sub-layers of residual blocks included."""
    names: list[str] = []
    if model.backend == "tensorflow":

        def visit_tf(blocks):
            for block in blocks:
                names.append(block.name)
                visit_tf(getattr(block, "body", ()))

        visit_tf(model.model.blocks)
    else:

        def visit_torch(items):
            for name, block in items:
                names.append(name)
                sub = getattr(block, "layers", None)
                visit_torch(sub.items() if sub is not None else ())

        visit_torch(model.model.blocks.items())
    return names


@pytest.mark.parametrize("case", sorted(NETWORKS))
def test_both_backends_agree(case):
    network, models, weights = build_pair(_source(NETWORKS[case]), seed=5)
    tf_model, pt_model = models["tensorflow"], models["pytorch"]

    assert _names(tf_model) == _names(pt_model)
    count = sum(int(np.prod(s)) for s in weight_shapes(network).values())
    assert tf_model.parameter_count() == pt_model.parameter_count() == count
    for model in models.values():  # the neutral layout survives the trip through each framework
        got = model.get_weights()
        assert got.keys() == weights.keys()
        for key in weights:
            np.testing.assert_array_equal(got[key], weights[key], err_msg=f"{model.backend} {key}")

    data = _sample(network, np.random.default_rng(11))
    names = [layer.name for layer in network.attention_layers]
    out_tf, att_tf = tf_model.forward(data, capture=names)
    out_pt, att_pt = pt_model.forward(data, capture=names)
    assert out_tf.shape == out_pt.shape == (3, *_fixed(network.output_shape, data.shape[1]))
    assert np.abs(out_tf).max() > 1e-3  # not a trivially zero output
    np.testing.assert_allclose(out_tf, out_pt, atol=1e-5, rtol=0)
    for name in names:
        np.testing.assert_allclose(att_tf[name], att_pt[name], atol=1e-5, rtol=0, err_msg=name)


def _fixed(shape, length):
    return tuple(length if d is None else d for d in shape)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_names_mean_the_same(activation):
    _, models, _ = build_pair(_source(f'input: (4, 6) layers: Activation("{activation}")'))
    data = np.random.default_rng(2).normal(0.0, 2.0, size=(2, 4, 6)).astype(np.float32)
    out_tf, _ = models["tensorflow"].forward(data)
    out_pt, _ = models["pytorch"].forward(data)
    np.testing.assert_allclose(out_tf, out_pt, atol=1e-5, rtol=0, err_msg=activation)


def test_decoder_attention_is_causal_in_both_backends():
    network, models, _ = build_pair(_source(NETWORKS["transformer_decoder"]), seed=3)
    assert [layer.name for layer in network.attention_layers] == [
        "transformer_decoder_0",
        "transformer_decoder_1",
    ]
    data = _sample(network, np.random.default_rng(4), length=9)
    upper = np.triu(np.ones((9, 9), dtype=bool), k=1)
    for model in models.values():
        _, probs = model.forward(data, capture=["transformer_decoder_0", "transformer_decoder_1"])
        for name, p in probs.items():
            assert p.shape == (3, 2, 9, 9)
            assert np.all(p[..., upper] == 0.0), f"{model.backend} {name}"
            np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_learned_positions_bound_the_sequence_length(backend):
    network = compile_source(_source(NETWORKS["positional_encoding_learned"]))
    model = get_backend(backend).build(network, seed=0)
    model.forward(np.zeros((1, 12, 8), np.float32))
    with pytest.raises(InvalidInputError, match="covers at most 12 positions"):
        model.forward(np.zeros((1, 13, 8), np.float32))


@pytest.mark.parametrize(
    ("layers", "words"),
    [
        ('PositionalEncoding(kind="learned")', "needs a fixed sequence length or max_len"),
        ('PositionalEncoding(kind="learnd")', "did you mean `learned`?"),
        ("PositionalEncoding(max_len=4)", "covers max_len=4 positions but the sequence has 6"),
    ],
)
def test_positional_encoding_specs_are_checked(layers, words):
    length = "None" if "learned" in layers else "6"
    with pytest.raises(DSLError, match=re.escape(words)):
        compile_source(f"network N {{ input: ({length}, 8) layers: {layers} }}")
