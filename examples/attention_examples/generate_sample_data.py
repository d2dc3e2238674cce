"""Write sample inputs for the example models into ./data (or the folder given).

    python generate_sample_data.py [OUTPUT_DIR]

- basic_input.npy        (1, 50, 256) float32, for basic_transformer.neural
- multi_layer_input.npy  (2, 128, 512) float32, for multi_layer_transformer.neural
- text_token_ids.npy     (1, 32) int64 token ids, for text_classification.neural
- text_tokens.txt        32 comma-separated labels to pass to --tokens
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SENTENCE = (
    "the cat sat on the mat because it was warm and the dog watched from the door while "
    "rain fell softly on the old roof of the quiet house"
).split()


def generate(output_dir: Path, *, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    # A smooth signal plus noise gives the positions some structure to attend to.
    positions = np.linspace(0, 4 * np.pi, 50)[None, :, None]
    basic = np.sin(positions * rng.uniform(0.5, 2.0, size=(1, 1, 256))) + 0.3 * rng.standard_normal(
        (1, 50, 256)
    )
    tokens = (SENTENCE * 2)[:32]  # text_classification.neural reads 32 positions
    vocab = {word: i + 1 for i, word in enumerate(sorted(set(tokens)))}  # 0 stays the padding id
    files = {
        "basic_input.npy": basic.astype(np.float32),
        "multi_layer_input.npy": rng.standard_normal((2, 128, 512)).astype(np.float32),
        "text_token_ids.npy": np.array([[vocab[w] for w in tokens]], dtype=np.int64),
    }
    written = {}
    for name, array in files.items():
        np.save(output_dir / name, array)
        written[name] = output_dir / name
    (output_dir / "text_tokens.txt").write_text(",".join(tokens) + "\n", encoding="utf-8")
    written["text_tokens.txt"] = output_dir / "text_tokens.txt"
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data"
    for path in generate(out).values():
        print(f"wrote {path}")
