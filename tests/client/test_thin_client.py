"""The thin client pulls no TensorFlow, PyTorch or lark, and exposes the surface we mean."""

from __future__ import annotations

import subprocess
import sys

import neural_attn.client as client_pkg


def test_importing_the_client_loads_no_framework():
    code = (
        "import sys, neural_attn.client, neural_attn.client.cli, neural_attn.analysis;"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras', 'lark') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_surface():
    assert sorted(client_pkg.__all__) == [
        "AttentionClient",
        "AttentionVisualizer",
        "CompileResult",
        "InputSpec",
        "LayerInfo",
    ]


def test_visualizer_has_the_feature_documents_methods():
    import inspect

    from neural_attn.client import AttentionVisualizer

    expected = {
        "extract_attention_weights": ["input_data", "layer_names"],
        "visualize": ["input_data", "layer_name", "head_index", "tokens", "output_path"],
        "visualize_from_dsl": [
            "dsl_file",
            "input_data",
            "backend",
            "layer_name",
            "head_index",
            "tokens",
            "output_dir",
        ],
        "plot_attention_heads": ["attention_weights", "tokens", "output_path"],
        "create_interactive_visualization": ["attention_weights", "tokens", "output_path"],
        "analyze_attention_patterns": ["attention_weights"],
    }
    for method, params in expected.items():
        signature = inspect.signature(getattr(AttentionVisualizer, method))
        positional = [
            name
            for name, p in signature.parameters.items()
            if p.kind is p.POSITIONAL_OR_KEYWORD and name != "self"
        ]
        assert positional == params, method  # extras of ours are keyword-only
    init = inspect.signature(AttentionVisualizer.__init__)
    assert list(init.parameters)[1:3] == ["model", "backend"]
    assert init.parameters["backend"].default == "tensorflow"
    defaults = inspect.signature(AttentionVisualizer.visualize_from_dsl).parameters
    assert defaults["output_dir"].default == "attention_outputs"
    assert defaults["backend"].default == "tensorflow"


def test_the_feature_documents_module_path_maps_to_ours():
    # the feature document's `neural.explainability.attention_visualizer` is ours under client
    from neural_attn.client import AttentionVisualizer
    from neural_attn.client.attention_visualizer import AttentionVisualizer as same

    assert AttentionVisualizer is same
