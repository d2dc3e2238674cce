"""The Python API end to end: compile, extract, analyze and draw, in both backends.

    python visualize_attention_demo.py [--server host:port] [--output-dir DIR]

Without --server an embedded server runs in this process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from neural_attn.client import AttentionVisualizer

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server")
    parser.add_argument("--output-dir", default="attention_demo_outputs")
    args = parser.parse_args()
    out = Path(args.output_dir)

    # 1. The quick start: a .neural file, your data, every output file.
    visualizer = AttentionVisualizer(model=None, backend="tensorflow", server=args.server)
    input_data = np.random.default_rng(0).standard_normal((1, 50, 256)).astype(np.float32)
    results = visualizer.visualize_from_dsl(
        dsl_file=str(HERE / "basic_transformer.neural"),
        input_data=input_data,
        backend="tensorflow",
        output_dir=str(out / "basic_tensorflow"),
    )
    for layer_name, weights in results["attention_weights"].items():
        print(f"{layer_name}: {weights.shape}")
        analysis = visualizer.analyze_attention_patterns(weights)
        print(f"  Entropy: {analysis['avg_entropy']:.3f}")
        print(f"  Diagonal strength: {analysis['avg_diagonal_strength']:.3f}")

    # 2. Token ids through an Embedding, with labels, in PyTorch; one layer, one head.
    words = "the cat sat on the mat because it was warm and the dog watched from the door".split()
    words = (words * 2)[:32]
    vocab = {w: i + 1 for i, w in enumerate(sorted(set(words)))}  # 0 is the padding id
    ids = np.array([[vocab[w] for w in words]], dtype=np.int64)
    text = AttentionVisualizer(
        str(HERE / "text_classification.neural"), backend="pytorch", server=args.server
    )
    weights = text.extract_attention_weights(ids)
    for name, w in weights.items():
        print(f"{name}: {w.shape}, rows sum to {w.sum(-1).mean():.4f}")
    text.visualize(
        ids,
        layer_name="transformer_encoder_0",
        head_index=1,
        tokens=words,
        output_path=str(out / "text_pytorch_head1.png"),
    )
    text.plot_attention_heads(
        weights["transformer_encoder_0"][0],
        tokens=words,
        output_path=str(out / "text_pytorch_heads.png"),
    )
    page = text.create_interactive_visualization(
        weights, tokens=words, output_path=str(out / "text_pytorch.html")
    )
    print(f"interactive page: {page}")

    # 3. Compare layers of a deeper model: per-layer entropy, custom sparsity metric.
    deep = AttentionVisualizer(str(HERE / "multi_layer_transformer.neural"), server=args.server)
    data = np.random.default_rng(1).standard_normal((1, 128, 512)).astype(np.float32)
    for name, w in deep.extract_attention_weights(data).items():
        analysis = deep.analyze_attention_patterns(w)
        sparsity = float((w < 0.01).sum() / w.size)
        print(
            f"{name}: entropy {analysis['avg_entropy']:.3f}, sparsity {sparsity:.2%}, "
            f"patterns {analysis['pattern_per_head']}"
        )


if __name__ == "__main__":
    main()
