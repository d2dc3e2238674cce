"""dsl/parser.py: text to syntax IR, positions and every spelling of a value."""

from __future__ import annotations

import pytest

from neural_attn.dsl import HPO, Call, Name, Pos, parse
from neural_attn.dsl.ir import LayerCall


def one_value(text: str):
    """The value of the single argument of `Dense(<text>)`."""
    program = parse(f"network N {{ input: (3,) layers: Dense({text}) }}")
    (arg,) = program.networks[0].layers[0].args
    return arg.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("-3", -3),
        ("0.5", 0.5),
        ("1e-4", 1e-4),
        ("2.5E+3", 2500.0),
        (".5", 0.5),
        ("-1.5e-2", -0.015),
        ('"relu"', "relu"),
        ("'relu'", "relu"),
        (r'"a\"b"', 'a"b'),
        (r"'it\'s'", "it's"),
        (r'"tab\there\\n"', "tab\there\\n"),
        ('""', ""),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("None", None),
        ("NONE", None),
        ("none", None),
        ("(3, 3)", (3, 3)),
        ("(3)", (3,)),
        ("(512,)", (512,)),
        ("()", ()),
        ("[1, 2, 3,]", (1, 2, 3)),
        ("[]", ()),
        ("((1, 2), [3])", ((1, 2), (3,))),
        ("relu", Name("relu")),
        ("trueish", Name("trueish")),
        ("None_", Name("None_")),
    ],
)
def test_value_spellings(text, expected):
    value = one_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_call_values_keep_positional_and_named_arguments():
    value = one_value("ExponentialDecay(0.1, 1000, decay_rate=0.9)")
    assert value == Call("ExponentialDecay", (0.1, 1000), (("decay_rate", 0.9),))


@pytest.mark.parametrize(
    ("text", "kind", "default"),
    [
        ("HPO(choice(32, 64))", "choice", 32),
        ('HPO(choice("relu", "tanh"))', "choice", "relu"),
        ("HPO(range(0.3, 0.7, step=0.1))", "range", 0.3),
        ("HPO(range(128, 512, 64))", "range", 128),
        ("HPO(log_range(1e-4, 1e-2))", "log_range", 1e-4),
    ],
)
def test_hpo_expressions(text, kind, default):
    value = one_value(text)
    assert isinstance(value, HPO)
    assert (value.kind, value.default) == (kind, default)


def test_hpo_nested_in_calls():
    value = one_value("SGD(learning_rate=ExponentialDecay(HPO(range(0.05, 0.2, step=0.05)), 1000))")
    decay = dict(value.kwargs)["learning_rate"]
    assert isinstance(decay, Call) and isinstance(decay.args[0], HPO)


SOURCE = """\
# a comment line
define Block {
  Conv2D(32, (3,3)) ; MaxPooling2D((2,2))
}

network Net {  # trailing comment
    input: (None, 28, 28, 1)
    layers: Block() * 2
        Dense(64, activation=relu) @ "cuda:0"
        ResidualConnection {
            Dense(64)
        }
        Flatten
        Output(10, "softmax");
    loss: categorical_crossentropy
    optimizer: Adam(learning_rate=1e-3)
    metrics: ["accuracy"]
    train { epochs: 10, batch_size: 32 }
    execute { device: "cpu" }
}
"""


def test_structure_and_positions():
    program = parse(SOURCE, filename="net.neural")
    assert program.filename == "net.neural"
    (macro,) = program.macros
    assert macro.name == "Block" and macro.pos == Pos(2, 1)
    assert [c.type for c in macro.body] == ["Conv2D", "MaxPooling2D"]
    assert macro.body[1].pos == Pos(3, 23)
    (net,) = program.networks
    assert (net.name, net.pos) == ("Net", Pos(6, 1))
    assert net.input_shape == (None, 28, 28, 1) and net.input_pos == Pos(7, 5)
    block, dense, residual, flatten, output = net.layers
    assert block == LayerCall("Block", (), Pos(8, 13), repeat=2, has_parens=True)
    assert dense.device == "cuda:0" and dense.pos == Pos(9, 9)
    assert dense.args[1].name == "activation" and dense.args[1].pos == Pos(9, 19)
    assert dense.args[0].pos == Pos(9, 15)
    assert [c.type for c in residual.children] == ["Dense"]
    assert residual.children[0].pos == Pos(11, 13)
    assert not residual.has_parens and not flatten.has_parens
    assert output.args[1].value == "softmax"
    sections = {key: (value, pos) for key, value, pos in net.sections}
    assert sections["loss"] == (Name("categorical_crossentropy"), Pos(15, 5))
    assert sections["metrics"][0] == ("accuracy",)
    assert [(a.name, a.value) for a in sections["train"][0]] == [("epochs", 10), ("batch_size", 32)]
    assert "execute" in sections


def test_layers_on_the_same_line_as_the_keyword_and_one_line_files():
    program = parse("network N { input: (4,) layers: Dense(2) Dropout(0.1) Dense(1) }")
    assert [c.type for c in program.networks[0].layers] == ["Dense", "Dropout", "Dense"]


def test_keywords_are_plain_names_where_no_keyword_fits():
    program = parse("network N { input: (4,) layers: Dense(2) train { loss: 1, input: 2 } }")
    ((key, entries, _),) = program.networks[0].sections
    assert key == "train" and [a.name for a in entries] == ["loss", "input"]


def test_no_lark_objects_in_the_ir():
    program = parse(SOURCE)

    def walk(obj):
        assert type(obj).__module__.split(".")[0] != "lark", obj
        if isinstance(obj, tuple | list):
            for item in obj:
                walk(item)
        elif hasattr(obj, "__dataclass_fields__"):
            for name in obj.__dataclass_fields__:
                walk(getattr(obj, name))
        elif isinstance(obj, str):
            assert type(obj) is str

    walk(program)


def test_several_networks_and_an_empty_file():
    assert parse("").networks == ()
    program = parse(
        "network A { input: (1,) layers: Dense(1) }\nnetwork B { input: (1,) layers: Dense(1) }"
    )
    assert [n.name for n in program.networks] == ["A", "B"]
