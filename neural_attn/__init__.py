"""neural-attn: see what the attention heads of Neural DSL transformer models do.

Subpackages: ``dsl`` (parser and IR), ``backends`` (TensorFlow / PyTorch builders),
``server`` (gRPC service), ``client`` (SDK, visualizer, CLI). Importing this package
imports nothing heavy.
"""

__version__ = "0.1.0"
