"""Every real .neural file of the corpus compiles, or is refused with a pinned message."""

from __future__ import annotations

from pathlib import Path

import pytest

from neural_attn.dsl import compile_file
from neural_attn.errors import DSLError

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
FILES = sorted(CORPUS.glob("*.neural"))

# file -> (expected words of the message, line, column)
REFUSED = {
    "nested_layers.neural": (
        "`TransformerEncoder` cannot have a body `{ ... }`: only ResidualConnection groups layers",
        5,
        5,
    ),
    "three_inputs_neuron.neural": (
        "this file defines 2 networks (ThreeInputNeuron, ThreeInputNeuron); pick one with "
        "--network NAME, but `ThreeInputNeuron` names 2 of them",
        7,
        1,
    ),
}

# file -> {layer name: output shape} for a few layers of the files that compile
SHAPES = {
    "transformer.neural": {
        "embedding_0": (100, 512),
        "transformer_encoder_0": (100, 512),
        "global_average_pooling1d_0": (512,),
        "output_0": (10,),
    },
    "lambda_sec_transformer.neural": {
        "transformer_encoder_5": (128, 512),
        "global_average_pooling1d_0": (512,),
        "dense_0": (256,),
    },
    "lambda_sec_Newton.neural": {"transformer_encoder_2": (None, 512), "output_0": (None, 10)},
    "layer_multiplication.neural": {"dense_2": (None, 64), "dropout_0": (None, 64)},
    "LayersMultiplication_NestedLayers.neural": {
        "conv2d_2": (3, 3, 32),
        "max_pooling2d_2": (1, 1, 32),
    },
    "macros.neural": {"conv2d_0": (26, 26, 32), "batch_normalization_0": (26, 26, 32)},
    "mnist.neural": {"flatten_0": (5408,), "output_0": (10,)},
    "mnist_2.neural": {"dense_0": (128,), "dropout_0": (128,)},
    "advanced_hpo_v0.2.5.neural": {"flatten_0": (1600,), "output_0": (10,)},
    "example.neural": {"dense_0": (28, 128), "output_0": (28, 10)},
    "gpu.neural": {"flatten_0": (10816,)},
    "sentiment.neural": {"embedding_0": (100, 300), "lstm_0": (100, 128), "lstm_1": (64,)},
    "neuralpaper_resnet.neural": {
        "max_pooling2d_0": (56, 56, 64),
        "residual_connection_2": (28, 28, 128),
        "global_average_pooling2d_0": (128,),
        "dense_0": (1000,),
    },
    "tests_sample.neural": {"dense_0": (26, 26, 10)},
    "tiny.neural": {"output_0": (28, 28, 10)},
    "mnist_hpo.neural": {"dense_0": (28, 28, 128)},
}


def test_the_corpus_is_complete():
    assert (CORPUS / "README.md").exists() and (CORPUS / "LICENSE.md").exists()
    assert len(FILES) == 18
    assert set(REFUSED) | set(SHAPES) == {p.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_corpus_file(path):
    if path.name in REFUSED:
        words, line, column = REFUSED[path.name]
        with pytest.raises(DSLError) as info:
            compile_file(path)
        err = info.value
        assert words in err.reason
        assert (err.line, err.column) == (line, column)
        assert err.filename == str(path)
        return
    network = compile_file(path)
    by_name = {layer.name: layer for layer in network.layers}
    for name, shape in SHAPES[path.name].items():
        assert by_name[name].output_shape == shape, name


def test_hpo_files_say_which_values_they_use():
    network = compile_file(CORPUS / "advanced_hpo_v0.2.5.neural")
    assert network.layer("conv2d_0")["filters"] == 32
    assert network.layer("dropout_0")["rate"] == 0.3
    assert any("`dense_0`: units = HPO(choice(128, 256, 512))" in w for w in network.warnings)
    assert dict(network.train)["batch_size"] == 32


def test_three_inputs_neuron_each_network_is_otherwise_fine():
    text = (CORPUS / "three_inputs_neuron.neural").read_text()
    first, second = text.split("network ThreeInputNeuron")[1:]
    from neural_attn.dsl import compile_source

    for part in (first, second):
        network = compile_source("network ThreeInputNeuron" + part)
        assert network.input_shape == (3,) and network.layers[0].output_shape == (1,)
        assert network.layers[0]["activation"] is None
