"""dsl/layers.py: the registry backends rely on."""

from __future__ import annotations

import pytest

from neural_attn.dsl import LAYER_SPECS
from neural_attn.dsl.layers import REQUIRED, snake_case


def signature(type_name):
    return [(p.name, p.default) for p in LAYER_SPECS[type_name].params]


@pytest.mark.parametrize(
    ("type_name", "params"),
    [
        ("Embedding", [("input_dim", REQUIRED), ("output_dim", REQUIRED), ("mask_zero", False)]),
        (
            "TransformerEncoder",
            [
                ("num_heads", REQUIRED),
                ("ff_dim", REQUIRED),
                ("dropout", 0.1),
                ("num_layers", 1),
                ("activation", "relu"),
                ("use_attention_mask", False),
                ("norm_first", False),
                ("epsilon", 1e-6),
            ],
        ),
        (
            "MultiHeadAttention",
            [
                ("num_heads", REQUIRED),
                ("key_dim", None),
                ("dropout", 0.0),
                ("causal", False),
                ("use_bias", True),
            ],
        ),
        ("LayerNormalization", [("epsilon", 0.001)]),
        ("Dense", [("units", REQUIRED), ("activation", None), ("use_bias", True)]),
        ("Output", [("units", REQUIRED), ("activation", None), ("use_bias", True)]),
        ("Dropout", [("rate", REQUIRED)]),
        ("GlobalAveragePooling1D", []),
        ("GlobalMaxPooling1D", []),
        ("Flatten", []),
    ],
)
def test_core_layer_parameters_are_exactly_these(type_name, params):
    assert signature(type_name) == params


@pytest.mark.parametrize(
    ("type_name", "snake"),
    [
        ("TransformerEncoder", "transformer_encoder"),
        ("MultiHeadAttention", "multi_head_attention"),
        ("GlobalAveragePooling1D", "global_average_pooling1d"),
        ("LayerNormalization", "layer_normalization"),
        ("Conv2D", "conv2d"),
        ("MaxPooling2D", "max_pooling2d"),
        ("LSTM", "lstm"),
        ("SimpleRNN", "simple_rnn"),
        ("Output", "output"),
    ],
)
def test_snake_case_names(type_name, snake):
    assert snake_case(type_name) == snake
    assert LAYER_SPECS[type_name].snake == snake


def test_signature_text():
    assert LAYER_SPECS["Dense"].signature() == "Dense(units, activation=None, use_bias=True)"
    assert 'activation="relu"' in LAYER_SPECS["TransformerEncoder"].signature()


def test_block_norm_and_gelu_tanh_parse_and_bad_values_are_refused():
    from neural_attn.dsl import compile_source
    from neural_attn.errors import DSLError

    head = "network N {\n  input: (None, 8)\n  layers:\n    "
    ok = compile_source(
        head + 'TransformerDecoder(num_heads=2, ff_dim=8, activation="gelu_tanh", '
        "norm_first=true, epsilon=1e-12)\n}\n"
    )
    layer = ok.layer("transformer_decoder_0")
    assert (layer["norm_first"], layer["epsilon"], layer["activation"]) == (
        True,
        1e-12,
        "gelu_tanh",
    )
    for bad, says in (
        ("epsilon=-1", "epsilon"),
        ("norm_first=3", "norm_first"),
        ('activation="gelu_tan"', "gelu_tanh"),  # the suggestion
    ):
        with pytest.raises(DSLError) as info:
            compile_source(head + f"TransformerEncoder(num_heads=2, ff_dim=8, {bad})\n}}\n")
        assert says in str(info.value) and "<string>:4:" in str(info.value), str(info.value)
