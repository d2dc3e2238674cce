"""Every corpus file through the real server's Compile in both backends, and every generated
`compiled_model_{backend}.py` executed.

Refused, with the messages pinned below:
- nested_layers.neural: `TransformerEncoder(...) { ... }` has no defined meaning (only
  ResidualConnection groups layers);
- three_inputs_neuron.neural: two networks share the name `ThreeInputNeuron`, so neither the
  default nor `--network ThreeInputNeuron` can pick one.
Everything else compiles in both backends, with the same layers, shapes and parameter count.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from neural_attn.backends.base import BACKENDS, sample_input
from neural_attn.backends.weights import weight_shapes
from neural_attn.dsl import compile_file
from neural_attn.errors import DSLError

# Not imported from conftest: tests/server has a conftest of its own, and the name is shared.
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "attention_examples"

CORPUS = ROOT / "tests" / "data" / "corpus"
FILES = sorted(CORPUS.glob("*.neural"))
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.neural"))

REFUSED = {
    "nested_layers.neural": (
        None,
        "nested_layers.neural:5:5: `TransformerEncoder` cannot have a body `{ ... }`: "
        "only ResidualConnection groups layers",
    ),
    "three_inputs_neuron.neural": (
        None,
        "three_inputs_neuron.neural:7:1: this file defines 2 networks (ThreeInputNeuron, "
        "ThreeInputNeuron); pick one with --network NAME, but `ThreeInputNeuron` names 2 of them",
    ),
    "three_inputs_neuron.neural --network ThreeInputNeuron": (
        "ThreeInputNeuron",
        "three_inputs_neuron.neural:7:1: 2 networks are named `ThreeInputNeuron` (lines 1 and 7), "
        "so the name is ambiguous",
    ),
}
COMPILED = [p for p in FILES if p.name not in REFUSED]
# Building is all Compile does (no forward pass beyond Keras's variable-creating call); even
# ResNet-18 on 224x224 or six 512-wide encoder blocks take about a second on a CPU.
COMPILE_SECONDS = 15.0
SAMPLE_LENGTH = 4


def _id(path: Path) -> str:
    return path.name


def test_the_refusals_name_real_files():
    assert {key.split()[0] for key in REFUSED} <= {p.name for p in FILES}
    assert len(COMPILED) == len(FILES) - 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_a_pinned_message(client, case, backend):
    network, words = REFUSED[case]
    path = CORPUS / case.split()[0]
    with pytest.raises(DSLError) as info:
        client.compile_file(path, backend=backend, network=network)
    assert words in str(info.value)
    assert info.value.status_name == "INVALID_ARGUMENT"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", COMPILED + EXAMPLE_FILES, ids=_id)
def test_compiles(client, path, backend):
    network = compile_file(path)
    start = time.perf_counter()
    result = client.compile_file(path, backend=backend)
    assert time.perf_counter() - start < COMPILE_SECONDS
    assert [(info.name, info.type) for info in result.layers] == [
        (layer.name, layer.type) for layer in network.layers
    ]
    assert [info.output_shape for info in result.layers] == [
        layer.output_shape for layer in network.layers
    ]
    # the same count in both backends: every parameter of the neutral layout, and only those
    assert result.parameter_count == sum(int(np.prod(s)) for s in weight_shapes(network).values())
    assert result.attention_layers == tuple(layer.name for layer in network.attention_layers)

    if result.attention_layers:
        streamed = dict(client.extract_attention(result, sequence_length=SAMPLE_LENGTH))
        assert list(streamed) == list(result.attention_layers)
        for name, probs in streamed.items():
            heads = network.layer(name)["num_heads"]
            seq = network.input_shape[0] or SAMPLE_LENGTH
            assert probs.shape == (1, heads, seq, seq), name
            np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4, err_msg=name)


# ---------------------------------------------------------------- the generated code


def _execute(code: str) -> dict:
    namespace = {"__name__": "compiled_model"}
    exec(compile(code, "compiled_model.py", "exec"), namespace)  # our own output
    return namespace


def _tf_view(model, data):
    names: list[str] = []

    def visit(blocks):
        for block in blocks:
            names.append(block.name)
            visit(getattr(block, "body", ()))

    visit(model.blocks)
    out = np.asarray(model(data))
    return names, out.shape, int(model.count_params())


def _torch_view(model, data):
    import torch

    names: list[str] = []

    def visit(items):
        for name, block in items:
            names.append(name)
            sub = getattr(block, "layers", None)
            visit(sub.items() if sub is not None else ())

    visit(model.blocks.items())
    with torch.inference_mode():
        out = model(torch.from_numpy(data)).numpy()
    return names, out.shape, sum(p.numel() for p in model.parameters())


def _all_names(layers) -> list[str]:
    names: list[str] = []
    for layer in layers:
        names.append(layer.name)
        names.extend(_all_names(layer.children))
    return names


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", COMPILED + EXAMPLE_FILES, ids=_id)
def test_generated_code_builds_the_served_model(client, path, backend):
    network = compile_file(path)
    result = client.compile_file(path, backend=backend)
    namespace = _execute(result.generated_code)
    assert namespace["NETWORK_NAME"] == network.name
    assert namespace["SOURCE_FILE"] == str(path)
    model = namespace["create_model"]()

    data = sample_input(network, length=SAMPLE_LENGTH)
    view = _tf_view if backend == "tensorflow" else _torch_view
    names, out_shape, count = view(model, data)
    assert names == _all_names(network.layers)
    expected = tuple(SAMPLE_LENGTH if d is None else d for d in network.output_shape)
    assert out_shape == (1, *expected)
    assert count == result.parameter_count
