"""No text from a request becomes code in `compiled_model_{backend}.py` (DESIGN §4).

The strings that reach the generated file: the file name (free text from the client), the
network name (an identifier), layer names from `name="..."` (identifiers), and choices such as
activation, padding or PositionalEncoding's kind (checked against fixed sets). Free text is
written as a `repr` literal; the rest is refused unless it is one of the allowed words.
"""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neural_attn.backends.codegen import Call, literal, render_call
from neural_attn.backends.pytorch import build as pytorch_backend
from neural_attn.backends.tensorflow import build as tensorflow_backend
from neural_attn.dsl import compile_source
from neural_attn.errors import DSLError

BACKENDS = ("tensorflow", "pytorch")
GENERATORS = {
    "tensorflow": tensorflow_backend.generate_code,
    "pytorch": pytorch_backend.generate_code,
}

SOURCE = """
network Safe {
  input: (None, 8)
  layers:
    PositionalEncoding(kind="sinusoidal")
    TransformerDecoder(num_heads=2, ff_dim=8)
    ResidualConnection { Dense(8, activation="relu", name="inner_dense") }
    Dense(4, activation="softmax", name="head")
  loss: "x\\"); __import__('os').system('touch PAYLOAD_LOSS') #"
}
"""


def _payloads(marker: str) -> list[str]:
    run = f"__import__('os').system('touch {marker}')"
    opened = f'open(r"{marker}", "w").close()'
    return [
        f'x"\n{run}',
        f'x"\n__import__("os")\n{opened}\n"',
        f"x'\n{run}\n'",
        f'x"""\n{run}\n"""',
        f"x'''\n{opened}\n'''",
        f'back\\slash\\"\\\n{run}',
        f"x\r\n{run}\r\n#",
        f"x\u2028{run}\u2029",
        f"x\x00\x0c{run}",
        f"{{{run}}}",  # format-string braces
    ]


def _structure(code: str) -> list[str]:
    """The top-level statements of a module, by kind and target: what a payload would change."""
    out = []
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign):
            out.append("assign " + ",".join(ast.unparse(t) for t in node.targets))
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            out.append(f"{type(node).__name__} {node.name}")
        else:
            out.append(type(node).__name__)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_file_names_stay_data(client, backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative payload would land here
    marker = tmp_path / "PAYLOAD_RAN"
    benign = client.compile(SOURCE, filename="safe.neural", backend=backend).generated_code
    for seed, filename in enumerate(_payloads(str(marker)), start=1):
        # A new seed each time: the server caches by content (not file name) and would hand
        # back the code written for the first name.
        code = client.compile(SOURCE, filename=filename, backend=backend, seed=seed).generated_code
        assert _structure(code) == _structure(benign), repr(filename)
        namespace = {"__name__": "compiled_model"}
        exec(compile(code, "compiled_model.py", "exec"), namespace)
        model = namespace["create_model"]()
        assert namespace["SOURCE_FILE"] == filename
        assert namespace["NETWORK_NAME"] == "Safe"
        assert not marker.exists(), repr(filename)
        assert not (tmp_path / "PAYLOAD_LOSS").exists()
        assert model is not None


@pytest.mark.parametrize(
    "slot",
    [
        "Dense(4, activation=\"relu\\\"); __import__('os').system('touch X') #\")",
        "Dense(4, activation=\"relu'''\\n__import__('os')\")",
        'Dense(4, name="x\\"; __import__(\'os\') #")',
        'Dense(4, name="a\\nb")',
        'Conv1D(2, 3, padding="same\\"\\"\\"")',
        'PositionalEncoding(kind="learned\\\\")',
        "Activation(\"__import__('os').system('x')\")",
    ],
)
def test_hostile_strings_in_layer_slots_are_refused(slot):
    with pytest.raises(DSLError):
        compile_source(f"network N {{ input: (6, 8) layers: {slot} }}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_layer_strings_are_refused_by_the_server(client, backend):
    source = 'network N { input: (6, 8) layers: Dense(4, activation="relu\\")\\nimport os #") }'
    with pytest.raises(DSLError) as info:
        client.compile(source, backend=backend)
    assert info.value.status_name == "INVALID_ARGUMENT"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(filename=st.text(max_size=80))
def test_any_file_name_is_one_string_literal(filename):
    network = compile_source(SOURCE, filename=filename)
    for generate in GENERATORS.values():
        code = generate(network)
        assigns = {
            ast.unparse(node.targets[0]): node.value
            for node in ast.parse(code).body
            if isinstance(node, ast.Assign)
        }
        value = assigns["SOURCE_FILE"]
        assert isinstance(value, ast.Constant) and value.value == filename
        assert _structure(code) == _structure(generate(compile_source(SOURCE)))


def test_literals_refuse_anything_but_plain_data():
    assert literal(("a", 1, 2.5, None, True)) == "('a', 1, 2.5, None, True)"
    assert literal(('x"\n',)) == "('x\"\\n',)"
    with pytest.raises(TypeError):
        literal(object())
    with pytest.raises(TypeError):
        literal({"a": 1})
    with pytest.raises(ValueError, match="not a constructor name"):
        render_call(Call("os.system('x') or print", {}))
    assert render_call(Call("keras.layers.Dense", {"units": 3, "name": "a'b"})) == (
        'keras.layers.Dense(units=3, name="a\'b")'
    )


def test_nested_calls_render_as_readable_code():
    network = compile_source(SOURCE)
    code = pytorch_backend.generate_code(network)
    assert "Residual(layers=[\n" in code
    assert "('inner_dense', Dense(in_features=8, units=8, activation='relu'" in code
    assert "codegen: sibling" not in code
    assert not re.search(r"^\s*(from|import) neural_attn", code, re.MULTILINE)
    namespace = {"__name__": "compiled_model"}
    exec(compile(code, "compiled_model.py", "exec"), namespace)
    import torch

    model = namespace["create_model"]()
    with torch.inference_mode():
        out = model(torch.from_numpy(np.zeros((1, 5, 8), np.float32)))
    assert tuple(out.shape) == (1, 5, 4)


BLOCK_OPTIONS = """
network Options {
  input: (None, 8)
  layers:
    TransformerDecoder(2, 16, norm_first=true, epsilon=1e-12, activation="gelu_tanh")
    TransformerEncoder(2, 16, epsilon=1e-5, activation="gelu")
    Dense(8, activation="gelu_tanh")
    LayerNormalization(epsilon=1e-5)
}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_generated_code_builds_the_served_model_with_block_options(backend):
    """norm_first, epsilon and gelu_tanh reach the generated file: its model, given the served
    model's weights, computes the served model's output."""
    net = compile_source(BLOCK_OPTIONS)
    impl = {"tensorflow": tensorflow_backend, "pytorch": pytorch_backend}[backend].BACKEND
    served = impl.build(net, seed=3, device="cpu")
    code = GENERATORS[backend](net)
    assert "norm_first=True" in code and "epsilon=1e-12" in code and "gelu_tanh" in code
    namespace: dict = {"__name__": "generated"}
    exec(compile(code, "compiled_model.py", "exec"), namespace)
    model = namespace["create_model"]()
    x = np.random.default_rng(0).standard_normal((1, 5, 8)).astype(np.float32)
    if backend == "pytorch":
        import torch

        model.load_state_dict(served.model.state_dict())
        with torch.no_grad():
            got = model(torch.from_numpy(x)).numpy()
            want = served.model(torch.from_numpy(x)).numpy()
    else:
        model.set_weights(served.model.get_weights())
        got = np.asarray(model(x))
        want = np.asarray(served.model(x))
    np.testing.assert_allclose(got, want, atol=1e-6)
