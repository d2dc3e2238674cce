"""The thin client: SDK, the documented `AttentionVisualizer`, rendering and the CLI.

Importing it pulls no TensorFlow, PyTorch or lark (a test checks it).
"""

from neural_attn.client._client import AttentionClient, CompileResult, InputSpec, LayerInfo
from neural_attn.client.attention_visualizer import AttentionVisualizer

__all__ = ["AttentionClient", "AttentionVisualizer", "CompileResult", "InputSpec", "LayerInfo"]
