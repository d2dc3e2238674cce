"""dsl/syntax_errors.py: malformed text gives a person's words, the right place and a caret."""

from __future__ import annotations

import pytest

from neural_attn.dsl import compile_source, parse
from neural_attn.errors import DSLError, DSLSemanticError, DSLSyntaxError


def body(layers: str, input_shape: str = "(28, 28)") -> str:
    return f"network A {{\n  input: {input_shape}\n  layers:\n    {layers}\n}}\n"


# (source, error class, message words, line, column)
CASES = [
    pytest.param(
        body('Dense(128, activation="relu"\n    Dropout(0.5)'),
        DSLSyntaxError,
        "missing `)` after the arguments of `Dense`",
        4,
        33,
        id="missing-paren",
    ),
    pytest.param(
        "network A {\n  input: (28, 28)\n  layers:\n    Dense(128)\n",
        DSLSyntaxError,
        "missing `}` to close the `network A` block",
        4,
        15,
        id="missing-brace",
    ),
    pytest.param(
        body("Dense(128)\n    Dropot(0.5)"),
        DSLSemanticError,
        "unknown layer `Dropot`; did you mean `Dropout`?",
        5,
        5,
        id="unknown-layer",
    ),
    pytest.param(
        body("Dense(unit=128)"),
        DSLSemanticError,
        "unknown parameter `unit` for Dense; did you mean `units`?",
        4,
        11,
        id="unknown-param",
    ),
    pytest.param(
        body('Dense("many")'),
        DSLSemanticError,
        '`units` of Dense must be a whole number of at least 1, got the string "many"',
        4,
        11,
        id="bad-value-type",
    ),
    pytest.param(
        body("TransformerEncoder(num_heads=3, ff_dim=512)", "(50, 256)"),
        DSLSemanticError,
        "num_heads=3 does not divide the model width 256 of TransformerEncoder "
        "`transformer_encoder_0` (the input is (50, 256))",
        4,
        5,
        id="num-heads",
    ),
    pytest.param(
        body("Conv2D(32, (3,3))\n    GlobalAveragePooling1D()", "(28, 28, 1)"),
        DSLSemanticError,
        "GlobalAveragePooling1D needs a (steps, features) input but `conv2d_0` gives (26, 26, 32)",
        5,
        5,
        id="gap1d-after-3d",
    ),
    pytest.param(
        body("Dense(1) $ 3"),
        DSLSyntaxError,
        "unexpected character `$`",
        4,
        14,
        id="bad-char",
    ),
    pytest.param(
        body("Dense(128 activation=relu)"),
        DSLSyntaxError,
        "expected `,` or `)` in the arguments of `Dense`, found `activation`",
        4,
        15,
        id="bad-token-mid-line",
    ),
    pytest.param(
        body('Dense(1, activation="relu)'),
        DSLSyntaxError,
        'unterminated string: the closing `"` is missing',
        4,
        25,
        id="unterminated-string",
    ),
    pytest.param(
        'network A {\n  input: (3,)\n  layers:\n  loss: "mse"\n}\n',
        DSLSyntaxError,
        "`layers:` lists no layers",
        3,
        3,
        id="empty-layers",
    ),
    pytest.param(
        "network A {\n  input: (3,)\n  layers: Dense(1)\n  lyers: 3\n}\n",
        DSLSyntaxError,
        "unknown section `lyers`; did you mean `layers`?",
        4,
        3,
        id="unknown-section",
    ),
    pytest.param(
        "network A {\n  input (3,)\n  layers: Dense(1)\n}\n",
        DSLSyntaxError,
        "missing `:` after `input`",
        2,
        8,
        id="missing-colon",
    ),
    pytest.param(
        "network A { input: (3,) layers: Dense(units: 3) }",
        DSLSyntaxError,
        "named arguments are written `units=...`, not `units: ...`",
        1,
        44,
        id="colon-for-equals",
    ),
    pytest.param(
        "network A { input: (3,) layers: Dense(units=) }",
        DSLSyntaxError,
        "missing a value after `units=` in the arguments of `Dense`",
        1,
        45,
        id="missing-value",
    ),
    pytest.param(
        "network A { input: (3,) layers: Dense(1)) }",
        DSLSyntaxError,
        "unmatched `)`: no `(` is open here",
        1,
        41,
        id="unmatched-paren",
    ),
    pytest.param(
        "network A { input: (3,) layers: Dense(1) * many }",
        DSLSyntaxError,
        "`*` must be followed by a number of repetitions, found `many`",
        1,
        44,
        id="bad-repeat",
    ),
    pytest.param(
        "network A { input: (3,) layers: Dense(1)\n train { epochs: 3\n"
        ' execution { device: "cpu" } }',
        DSLSyntaxError,
        "missing `}` to close the `train` block before `execution`",
        2,
        19,
        id="unclosed-train",
    ),
    pytest.param(
        "Network A { input: (3,) layers: Dense(1) }",
        DSLSyntaxError,
        "`Network` must be written in lower case: `network`",
        1,
        1,
        id="capital-network",
    ),
    pytest.param(
        "network A { input: (3,) layers: Dense(1, units=2, units=3) }",
        DSLSyntaxError,
        "`units` is given twice in the arguments of `Dense`",
        1,
        51,
        id="duplicate-kwarg",
    ),
    pytest.param(
        "network A { input: (3,) layers: Dense(HPO(grid(1, 2))) }",
        DSLSyntaxError,
        "`HPO(...)` takes one search space",
        1,
        39,
        id="bad-hpo",
    ),
    pytest.param(
        "network A { input: (3,) layers: Dense(1) loss: 'x' loss: 'y' }",
        DSLSyntaxError,
        "`loss` is given twice in network `A` (first on line 1)",
        1,
        52,
        id="duplicate-section",
    ),
]


@pytest.mark.parametrize(("source", "cls", "words", "line", "column"), CASES)
def test_error_messages(source, cls, words, line, column):
    with pytest.raises(cls) as info:
        compile_source(source, filename="model.neural")
    err = info.value
    assert words in err.reason
    assert (err.filename, err.line, err.column) == ("model.neural", line, column)
    assert err.source_line == source.split("\n")[line - 1]
    # The rendered message: place, reason, the line itself, then a caret under the column.
    rendered = str(err).split("\n")
    assert rendered[0] == f"model.neural:{line}:{column}: {err.reason}"
    assert rendered[1].endswith(err.source_line.rstrip())
    gutter = rendered[1].index("| ") + 2
    assert rendered[2].index("^") - gutter == column - 1


def test_messages_never_dump_tokens():
    for param in CASES:
        source = param.values[0]
        with pytest.raises(DSLError) as info:
            compile_source(source)
        text = str(info.value)
        for token_name in ("RPAR", "LPAR", "$END", "NAME", "Token(", "__ANON", "Tree("):
            assert token_name not in text


def test_hint_says_where_a_bracket_was_opened():
    with pytest.raises(DSLSyntaxError) as info:
        parse(body('Dense(128, activation="relu"'))
    assert info.value.hint == "`(` opened on line 4, column 10 is never closed"


def test_end_of_file_errors_point_after_the_last_token():
    with pytest.raises(DSLSyntaxError) as info:
        parse("network")
    assert (info.value.line, info.value.column) == (1, 8)
    assert "expected a name after `network`, found the end of the file" in info.value.reason


def test_smart_quotes_get_a_hint():
    with pytest.raises(DSLSyntaxError) as info:
        parse("network A { input: (3,) layers: Dense(1, activation=\u201crelu\u201d) }")
    assert "straight quotes" in (info.value.hint or "")


def test_deep_nesting_is_a_dsl_error():
    with pytest.raises(DSLError):
        compile_source(
            "network A { input: " + "(" * 3000 + "1" + ")" * 3000 + " layers: Dense(1) }"
        )
