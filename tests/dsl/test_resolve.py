"""dsl/resolve.py: expansion, binding, naming, shapes and the semantic errors."""

from __future__ import annotations

import json

import pytest

from neural_attn.dsl import HPO, compile_source, network_to_dict
from neural_attn.errors import DSLSemanticError


def net(layers: str, input_shape: str = "(10, 16)", extra: str = ""):
    return compile_source(f"network N {{\n input: {input_shape}\n layers:\n {layers}\n{extra}}}")


def shapes(network):
    return [(layer.name, layer.input_shape, layer.output_shape) for layer in network.layers]


def refused(layers: str, input_shape: str = "(10, 16)", extra: str = "") -> DSLSemanticError:
    with pytest.raises(DSLSemanticError) as info:
        net(layers, input_shape, extra)
    return info.value


# ---------------------------------------------------------------------------------- input


@pytest.mark.parametrize(
    ("declared", "per_item"),
    [
        ("(None, 28, 28)", (28, 28)),
        ("(None, 128, 512)", (128, 512)),
        ("(NONE, 512)", (None, 512)),
        ("(None, 32)", (None, 32)),
        ("(3)", (3,)),
        ("(512,)", (512,)),
        ("7", (7,)),
        ("(28, 28, 1)", (28, 28, 1)),
        ("(None, None, 8)", (None, 8)),
    ],
)
def test_input_shape_batch_rule(declared, per_item):
    assert net("Dropout(0.1)", declared).input_shape == per_item


def test_bad_input_dimensions():
    assert "no input shape" in refused("Dense(1)", "()").reason
    assert "got `0`" in refused("Dense(1)", "(0, 3)").reason
    assert 'got the string "a"' in refused("Dense(1)", '("a", 3)').reason


# ---------------------------------------------------------------------------------- binding


def test_positional_binding_defaults_and_normalization():
    layer = net('Dense(64, "ReLU")').layers[0]
    assert layer.params == (("units", 64), ("activation", "relu"), ("use_bias", True))
    assert net("Dense(3, activation=linear)").layers[0]["activation"] is None
    assert net("Dense(3, activation=None)").layers[0]["activation"] is None
    assert net("Output(3)").layers[0]["activation"] is None
    assert net("Dropout(0)").layers[0]["rate"] == 0.0
    assert isinstance(net("Dropout(0)").layers[0]["rate"], float)


@pytest.mark.parametrize(
    ("layers", "words"),
    [
        ("Dense()", "Dense needs `units`"),
        ("Dense(0)", "`units` of Dense must be a whole number of at least 1, got `0`"),
        ("Dense(2.5)", "got `2.5`"),
        ("Dense(true)", "got `true`"),
        ("Dropout(1)", "`rate` of Dropout must be a number from 0 up to (not including) 1"),
        ("Dropout(-0.1)", "got `-0.1`"),
        ("Dense(3, use_bias=1)", "`use_bias` of Dense must be true or false"),
        ('Dense(3, "relux")', "unknown activation `relux` for Dense; did you mean `relu`?"),
        ("Dense(3, 'relu', true, 4)", "Dense takes at most 3 positional arguments, got 4"),
        ("Dense(3, units=4)", "`units` of Dense is given twice: positionally and as `units=`"),
        ("Flatten(2)", "Flatten takes no arguments"),
        ("Dense(3, Adam(1))", "got the call `Adam(1)`"),
        ("Dense(choice(1, 2))", "got the call `choice(1, 2)`"),
        ("Lambda(x)", "`Lambda` layers run arbitrary code, which this service never does"),
        ("dense(3)", "unknown layer `dense`; did you mean `Dense`?"),
        ("Dense(3) * 0", "`* 0` repeats `Dense` no times"),
        ('Dense(3) @ "quantum"', 'unknown device "quantum" for `Dense`'),
        ('Dense(3, name="1x")', "a layer name must be letters, digits and `_`"),
        ('Dense(3, name="d") Dense(3, name="d")', "two layers are named `d`"),
        ('Dense(3, name="d") * 2', "two layers are named `d`"),
        ("Dense(3) * 20000", "this network expands to more than 2,000 layers"),
        ("TransformerEncoder(2, 8, num_layers=0)", "`num_layers` of TransformerEncoder"),
        ("Dense(3) { Dense(2) }", "`Dense` cannot have a body `{ ... }`"),
        ("ResidualConnection", "ResidualConnection needs a body"),
    ],
)
def test_binding_errors(layers, words):
    assert words in refused(layers).reason


def test_unknown_parameter_error_points_at_the_argument():
    err = refused("Dropout(0.1)\n Dense(unit=3)")
    assert err.reason == "unknown parameter `unit` for Dense; did you mean `units`?"
    assert (err.line, err.column) == (5, 8)
    assert err.hint == "the parameters are Dense(units, activation=None, use_bias=True)"


# ---------------------------------------------------------------------------------- naming


def test_names_and_expansion():
    network = net(
        "Embedding(100, 16)\n"
        " TransformerEncoder(num_heads=4, ff_dim=32) * 2\n"
        " TransformerEncoder(2, 32, num_layers=3)\n"
        " MultiHeadAttention(num_heads=4)\n"
        " LayerNormalization()\n"
        " GlobalAveragePooling1D()\n"
        " Dropout(0.1)\n"
        " Dense(8)\n"
        " Flatten()\n"
        " Output(2)",
        "(10,)",
    )
    assert [layer.name for layer in network.layers] == [
        "embedding_0",
        "transformer_encoder_0",
        "transformer_encoder_1",
        "transformer_encoder_2",
        "transformer_encoder_3",
        "transformer_encoder_4",
        "multi_head_attention_0",
        "layer_normalization_0",
        "global_average_pooling1d_0",
        "dropout_0",
        "dense_0",
        "flatten_0",
        "output_0",
    ]
    assert all(layer["num_layers"] == 1 for layer in network.layers[1:6])
    assert network.layers[3]["num_heads"] == 2
    assert [layer.name for layer in network.attention_layers][-1] == "multi_head_attention_0"


def test_explicit_names_override_and_do_not_use_an_index():
    network = net('Dense(4, name="first")\n Dense(4)\n Dense(4, name=head)')
    assert [layer.name for layer in network.layers] == ["first", "dense_0", "head"]


# ---------------------------------------------------------------------------------- shapes


def test_transformer_shapes_and_key_dim():
    network = net("MultiHeadAttention(4)\n MultiHeadAttention(3, key_dim=5)", "(None, 16)")
    assert network.layers[0]["key_dim"] == 4
    assert network.layers[1]["key_dim"] == 5
    assert shapes(network)[0] == ("multi_head_attention_0", (None, 16), (None, 16))


def test_embedding_first_with_declared_width_or_token_ids():
    declared = net("Embedding(1000, 16)\n TransformerEncoder(4, 32)", "(10, 16)")
    ids = net("Embedding(1000, 16)\n TransformerEncoder(4, 32)", "(10,)")
    for network in (declared, ids):
        assert shapes(network)[0] == ("embedding_0", (10,), (10, 16))
    assert declared.input_shape == (10, 16) and ids.input_shape == (10,)


@pytest.mark.parametrize(
    ("layers", "declared", "words", "line"),
    [
        (
            "Embedding(1000, 32)",
            "(10, 16)",
            "the declared input (10, 16) has 16 features but Embedding `embedding_0` outputs 32",
            4,
        ),
        ("Dense(16)\n Embedding(10, 16)", "(10, 16)", "Embedding must be the first layer", 5),
        ("Embedding(10, 16)", "(4, 4, 4)", "Embedding needs token ids (steps,)", 4),
        (
            "Dense(6)\n TransformerEncoder(num_heads=4, ff_dim=8)",
            "(10, 16)",
            "num_heads=4 does not divide the model width 6 of TransformerEncoder "
            "`transformer_encoder_0` (`dense_0` gives (10, 6))",
            5,
        ),
        ("MultiHeadAttention(5)", "(10, 16)", "num_heads=5 does not divide the model width 16", 4),
        (
            "TransformerEncoder(2, 8)",
            "(4, 4, 4)",
            "TransformerEncoder needs a (steps, features) input but the input is (4, 4, 4)",
            4,
        ),
        (
            "Flatten()\n GlobalMaxPooling1D()",
            "(4, 4)",
            "GlobalMaxPooling1D needs a (steps, features) input but `flatten_0` gives (16,)",
            5,
        ),
        ("Flatten()", "(None, 8)", "Flatten needs fixed sizes on every axis", 4),
        ("Dense(3)", "(8, None)", "Dense needs a known number of features in the last axis", 4),
        ("Conv2D(4, 3)", "(10, 16)", "Conv2D needs a (height, width, channels) input", 4),
        ("Conv2D(4, 5)", "(4, 4, 1)", "the window 5 is larger than the input size 4", 4),
        ("LSTM(4)", "(4,)", "LSTM needs a (steps, features) input but the input is (4,)", 4),
    ],
)
def test_shape_errors_name_the_previous_layer(layers, declared, words, line):
    err = refused(layers, declared)
    assert words in err.reason
    assert err.line == line and err.column == 2


def test_cnn_and_rnn_shapes():
    network = net(
        "Conv2D(8, (3,3), strides=2)\n MaxPooling2D(2)\n Conv2D(4, 3, padding=same)\n"
        " GlobalMaxPooling2D()",
        "(None, 28, 28, 3)",
    )
    assert [s[2] for s in shapes(network)] == [(13, 13, 8), (6, 6, 8), (6, 6, 4), (4,)]
    rnn = net("LSTM(8, return_sequences=True)\n GRU(4)\n Dense(2)", "(None, 5)")
    assert [s[2] for s in shapes(rnn)] == [(None, 8), (4,), (2,)]
    conv1d = net("Conv1D(4, 3)\n AveragePooling1D(2)\n Activation(tanh)", "(10, 3)")
    assert [s[2] for s in shapes(conv1d)] == [(8, 4), (4, 4), (4, 4)]


# ---------------------------------------------------------------------------------- part 4


def test_macros_repeat_and_device():
    source = (
        'define Block {\n  Conv2D(4, 3, padding="same")\n  BatchNormalization()\n}\n'
        'network N { input: (8, 8, 1) layers: Block * 2 @ "cuda:1" Block() Flatten }'
    )
    network = compile_source(source)
    assert [layer.name for layer in network.layers] == [
        "conv2d_0",
        "batch_normalization_0",
        "conv2d_1",
        "batch_normalization_1",
        "conv2d_2",
        "batch_normalization_2",
        "flatten_0",
    ]
    assert [layer.device for layer in network.layers][:5] == ["cuda:1"] * 4 + [None]


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("define A { B }\ndefine B { A }\nnetwork N { input: (3,) layers: A }", "uses itself"),
        ("define A { Dense(1) }\nnetwork N { input: (3,) layers: A(2) }", "takes no arguments"),
        ("define A { }\nnetwork N { input: (3,) layers: A }", "macro `A` has no layers"),
        ("define Dense { Dropout(0.1) }\nnetwork N { input: (3,) layers: Dense }", "would hide"),
        (
            "define A { Dense(1) }\ndefine A { Dense(2) }\nnetwork N { input: (3,) layers: A }",
            "twice",
        ),
    ],
)
def test_macro_errors(source, words):
    with pytest.raises(DSLSemanticError) as info:
        compile_source(source)
    assert words in info.value.reason


def test_residual_identity_projection_and_mismatch():
    network = net(
        "ResidualConnection { Dense(16) Dense(16) }\n"
        " ResidualConnection { Dense(8) Dense(8) Dense(8) }",
    )
    identity, projection = network.layers
    assert identity["shortcut"] == "identity" and identity.output_shape == (10, 16)
    assert [c.input_shape for c in projection.children] == [(10, 16), (10, 8), (10, 16)]
    assert projection["shortcut"] == "projection" and projection.output_shape == (10, 8)
    err = refused("ResidualConnection { Dense(8) }")
    assert "its body turns (10, 16) into (10, 8), which cannot be added back" in err.reason


def test_hpo_defaults_warnings_and_search_space():
    network = net(
        "Dense(HPO(choice(32, 64)))\n Dropout(HPO(range(0.1, 0.5, step=0.1)))",
        extra=" optimizer: Adam(learning_rate=HPO(log_range(1e-4, 1e-2)))\n"
        " train { batch_size: HPO(choice(16, 32)) }\n",
    )
    dense, dropout = network.layers
    assert dense["units"] == 32 and dropout["rate"] == 0.1
    assert dense.search_space[0][0] == "units" and isinstance(dense.search_space[0][1], HPO)
    assert network.warnings[0] == (
        "`dense_0`: units = HPO(choice(32, 64)); this build uses 32 (the first choice)"
    )
    assert [path for path, _ in network.search_space] == [
        "optimizer.learning_rate",
        "train.batch_size",
    ]
    assert dict(network.train) == {"batch_size": 16}
    assert dict(network.optimizer.kwargs) == {"learning_rate": 1e-4}


def test_sections_and_execute_alias():
    network = net(
        "Dense(1)",
        extra=' loss: mse\n optimizer: "Adam(learning_rate=1e-4)"\n metrics: [accuracy, "mae"]\n'
        ' execute { device: "cpu" }\n',
    )
    assert network.loss == "mse"
    assert network.optimizer == "Adam(learning_rate=1e-4)"
    assert network.metrics == ("accuracy", "mae")
    assert network.execution == (("device", "cpu"),)


# ---------------------------------------------------------------------------------- api


TWO = "network A { input: (3,) layers: Dense(1) }\nnetwork B { input: (3,) layers: Dense(2) }\n"


def test_picking_a_network():
    assert compile_source(TWO, network="B").layers[0]["units"] == 2
    with pytest.raises(DSLSemanticError) as info:
        compile_source(TWO)
    assert "this file defines 2 networks (A, B); pick one with --network NAME" in str(info.value)
    with pytest.raises(DSLSemanticError) as info:
        compile_source(TWO, network="b")
    assert "no network named `b` in this file (it defines A, B)" in info.value.reason
    same = TWO.replace("network B", "network A")
    with pytest.raises(DSLSemanticError) as info:
        compile_source(same, network="A")
    assert "2 networks are named `A` (lines 1 and 2), so the name is ambiguous" in info.value.reason
    with pytest.raises(DSLSemanticError) as info:
        compile_source("define X { Dense(1) }")
    assert "this file defines no network" in info.value.reason


def test_network_to_dict_is_json_and_stable():
    source = 'network N { input: (None, 16) layers: Dense(4) @ "cpu" optimizer: Adam(lr=0.1) }'
    first = network_to_dict(compile_source(source, filename="a.neural"))
    second = network_to_dict(compile_source(source.replace("{ ", "{\n  "), filename="b.neural"))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert list(first) == [
        "name",
        "input_shape",
        "layers",
        "loss",
        "optimizer",
        "metrics",
        "train",
        "execution",
        "warnings",
    ]
    assert first["input_shape"] == [None, 16]
    assert first["optimizer"] == {"call": "Adam", "args": [], "kwargs": {"lr": 0.1}}
    assert list(first["layers"][0]) == [
        "name",
        "type",
        "params",
        "input_shape",
        "output_shape",
        "children",
        "device",
    ]
    assert "line" not in json.dumps(first) and "a.neural" not in json.dumps(first)


def test_bodies_nest_at_most_max_nesting_deep():
    # Building a model recurses per level of bodies; past the bound it would be a
    # RecursionError in the backend (INTERNAL), so the file is refused here.
    from neural_attn.dsl.resolve import MAX_NESTING

    def nested(depth: int) -> str:
        body = "ResidualConnection { " * depth + "Dense(16)" + " }" * depth
        return f"network A {{ input: (8, 16) layers: {body} }}"

    assert compile_source(nested(MAX_NESTING)).layers
    with pytest.raises(DSLSemanticError, match=f"nest more than {MAX_NESTING} deep"):
        compile_source(nested(MAX_NESTING + 1))
