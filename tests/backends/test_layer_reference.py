"""The new layers against independent numpy implementations, from the neutral weights, in
both backends: Conv2D "same" with strides, average pooling that leaves padding out, LSTM, GRU,
SimpleRNN, BatchNormalization at inference, sinusoidal positions, residual blocks and the
causal TransformerDecoder."""

from __future__ import annotations

import numpy as np
import pytest
from pairs import BACKENDS, build_pair
from reference import (
    average_pool2d_same,
    batch_norm,
    conv2d,
    encoder,
    gru,
    lstm,
    simple_rnn,
    sinusoid,
)


def _run(source: str, data: np.ndarray, capture=()):
    _, models, weights = build_pair(f"network Ref {{\n{source}\n}}\n", seed=9)
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    outputs = {b: models[b].forward(data, capture=capture) for b in BACKENDS}
    return w, outputs


def _data(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, size=shape).astype(np.float32)


def test_conv2d_same_with_strides():
    x = _data(2, 9, 10, 3)
    w, outputs = _run(
        """input: (9, 10, 3) layers:
             Conv2D(4, (3, 4), strides=(2, 3), padding="same")
             Conv2D(2, (2, 2), strides=(2, 1), padding="valid")""",
        x,
    )
    y = conv2d(x, w["conv2d_0/kernel"], w["conv2d_0/bias"], (2, 3), "same")
    assert y.shape == (2, 5, 4, 4)
    y = conv2d(y, w["conv2d_1/kernel"], w["conv2d_1/bias"], (2, 1), "valid")
    for backend, (out, _) in outputs.items():
        np.testing.assert_allclose(out, y, atol=1e-5, rtol=0, err_msg=backend)


def test_average_pooling_same_leaves_padding_out_of_the_mean():
    x = _data(2, 7, 8, 3) + 5.0  # far from zero: counting a padded zero would show
    _, outputs = _run(
        'input: (7, 8, 3) layers: AveragePooling2D((3, 3), strides=(2, 2), padding="same")', x
    )
    y = average_pool2d_same(x.astype(np.float64), (3, 3), (2, 2))
    for backend, (out, _) in outputs.items():
        np.testing.assert_allclose(out, y, atol=1e-5, rtol=0, err_msg=backend)


@pytest.mark.parametrize(
    ("kind", "reference"), [("LSTM", lstm), ("GRU", gru), ("SimpleRNN", simple_rnn)]
)
def test_recurrent_layers(kind, reference):
    x = _data(3, 6, 5)
    snake = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}[kind]
    w, outputs = _run(f"input: (6, 5) layers: {kind}(4, return_sequences=true) {kind}(3)", x)

    def layer(i, data):
        p = f"{snake}_{i}/"
        return reference(data, w[p + "kernel"], w[p + "recurrent_kernel"], w[p + "bias"])

    first = layer(0, x.astype(np.float64))
    expected = layer(1, first)[:, -1]
    for backend, (out, _) in outputs.items():
        np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0, err_msg=backend)


def test_lstm_one_step():
    x = _data(2, 1, 3)
    w, outputs = _run("input: (1, 3) layers: LSTM(2)", x)
    kernel, bias = w["lstm_0/kernel"], w["lstm_0/bias"]
    z = x[:, 0] @ kernel + bias  # the state starts at zero: the recurrent term vanishes
    i, _f, g, o = np.split(z, 4, axis=-1)
    h = 1 / (1 + np.exp(-o)) * np.tanh(1 / (1 + np.exp(-i)) * np.tanh(g))
    for backend, (out, _) in outputs.items():
        np.testing.assert_allclose(out, h, atol=1e-5, rtol=0, err_msg=backend)


def test_batch_normalization_uses_the_moving_statistics():
    x = _data(4, 5, 3)
    w, outputs = _run("input: (5, 3) layers: BatchNormalization(epsilon=0.05)", x)
    y = batch_norm(x.astype(np.float64), w, "batch_normalization_0/", 0.05)
    for backend, (out, _) in outputs.items():
        np.testing.assert_allclose(out, y, atol=1e-5, rtol=0, err_msg=backend)


def test_sinusoidal_positions():
    x = _data(2, 11, 7)
    _, outputs = _run("input: (None, 7) layers: PositionalEncoding()", x)
    for backend, (out, _) in outputs.items():
        np.testing.assert_allclose(out, x + sinusoid(11, 7), atol=1e-5, rtol=0, err_msg=backend)


def test_learned_positions():
    x = _data(2, 4, 6)
    w, outputs = _run('input: (None, 6) layers: PositionalEncoding(5, kind="learned")', x)
    expected = x + w["positional_encoding_0/embeddings"][:4]
    for backend, (out, _) in outputs.items():
        np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0, err_msg=backend)


def test_residual_identity_and_projection():
    x = _data(2, 4, 6)
    w, outputs = _run(
        """input: (4, 6) layers:
             ResidualConnection { Dense(8, activation="relu") Dense(6) }
             ResidualConnection { Dense(5, activation="relu") Dense(3) Dense(3) }""",
        x,
    )

    def dense(name, data):
        return (
            data @ w[f"residual_connection_{name}/kernel"] + w[f"residual_connection_{name}/bias"]
        )

    y = x + dense("0/dense_1", np.maximum(dense("0/dense_0", x), 0))
    # the body keeps (4, 6) -> identity; (4, 6) -> (4, 3) -> the last Dense projects the input
    y = dense("1/dense_3", np.maximum(dense("1/dense_2", y), 0)) + dense("1/dense_4", y)
    for backend, (out, _) in outputs.items():
        np.testing.assert_allclose(out, y, atol=1e-5, rtol=0, err_msg=backend)


def test_decoder_attention_matches_the_causal_reference():
    x = _data(2, 7, 8)
    names = ["transformer_decoder_0", "transformer_decoder_1"]
    w, outputs = _run(
        "input: (None, 8) layers: TransformerDecoder(num_heads=2, ff_dim=12, num_layers=2)",
        x,
        capture=names,
    )
    y, p0 = encoder(x.astype(np.float64), w, "transformer_decoder_0/", causal=True)
    y, p1 = encoder(y, w, "transformer_decoder_1/", causal=True)
    upper = np.triu(np.ones((7, 7), dtype=bool), k=1)
    for backend, (out, probs) in outputs.items():
        np.testing.assert_allclose(out, y, atol=1e-5, rtol=0, err_msg=backend)
        for name, expected in zip(names, (p0, p1), strict=True):
            np.testing.assert_allclose(probs[name], expected, atol=1e-5, err_msg=name)
            assert np.all(probs[name][..., upper] == 0.0)
