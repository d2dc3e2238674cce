"""The CLI as a user runs it: a subprocess on an example, then the files it wrote, opened."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "attention_examples"


def _cli() -> list[str]:
    exe = shutil.which("neural-attn-client", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "neural_attn.client.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_cli(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def _png_is_a_picture(path: Path) -> None:
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 10, f"{path.name} looks blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


@pytest.mark.slow
def test_visualize_tensorflow_basic_example(tmp_path):
    data = np.random.default_rng(0).standard_normal((1, 50, 256)).astype(np.float32)
    np.save(tmp_path / "input.npy", data)
    out = tmp_path / "out"
    result = _run(
        "visualize",
        str(EXAMPLES / "basic_transformer.neural"),
        "--attention",
        "--data",
        str(tmp_path / "input.npy"),
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "embedded server" in result.stderr
    assert "Found 1 attention layer" in result.stdout
    assert "transformer_encoder_0: shape (1, 4, 50, 50)" in result.stdout
    assert re.search(r"^\s+3\s+\d+\.\d{4}\s+\d\.\d{4}\s+\d+\.\d{4}", result.stdout, re.M)

    _png_is_a_picture(out / "attention_heatmap.png")
    _png_is_a_picture(out / "attention_heads_transformer_encoder_0.png")
    with np.load(out / "attention_weights.npz") as npz:
        assert list(npz.keys()) == ["transformer_encoder_0"]
        weights = npz["transformer_encoder_0"]
    assert weights.shape == (1, 4, 50, 50)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["backend"] == "tensorflow"
    assert len(analysis["layers"]["transformer_encoder_0"]["attention_entropy"]) == 4
    page = (out / "attention_interactive.html").read_text()
    blob = re.search(
        r'<script type="application/json" id="attention-data">(.*?)</script>', page, re.S
    )
    assert blob is not None
    assert "transformer_encoder_0" in blob.group(1)
    code = (out / "compiled_model_tensorflow.py").read_text()
    namespace: dict[str, object] = {}
    exec(compile(code, "compiled_model_tensorflow.py", "exec"), namespace)  # noqa: S102
    model = namespace["create_model"]()  # type: ignore[operator]
    assert [b.name for b in model.blocks][0] == "transformer_encoder_0"


@pytest.mark.slow
def test_visualize_pytorch_tokens_layer_and_head(tmp_path):
    words = [f"w{i}" for i in range(32)]
    out = tmp_path / "out"
    result = _run(
        "visualize",
        str(EXAMPLES / "text_classification.neural"),
        "--attention",
        "--backend",
        "pytorch",
        "--tokens",
        ",".join(words),
        "--layer",
        "multi_head_attention_0",
        "--head",
        "1",
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Found 1 attention layer" in result.stdout
    assert "multi_head_attention_0: shape (1, 2, 32, 32)" in result.stdout
    assert (out / "compiled_model_pytorch.py").is_file()
    _png_is_a_picture(out / "attention_heatmap.png")
    assert "w31" in (out / "attention_interactive.html").read_text()


def test_an_npz_over_its_budget_is_not_written_and_the_cli_says_how_to_get_it(tmp_path):
    """4 + 2 heads x 32 x 32 float32 is 24 KiB: over an 8K budget only a window of it is written."""
    model = str(EXAMPLES / "text_classification.neural")
    args = ["visualize", model, "--attention", "--backend", "pytorch", "--npz-max-bytes", "8K"]
    result = _run(*args, "--output-dir", "whole", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    note = re.search(r"^note: attention_weights\.npz not written: .*$", result.stderr, re.M)
    assert note is not None, result.stderr
    assert "(2 layers, float32, up to 32 x 32 per head) would take 24 KiB, over the 8 KiB" in (
        note.group(0)
    )
    assert "--npz-max-bytes 1G" in note.group(0) and "--window Q0:Q1,K0:K1" in note.group(0)
    out = tmp_path / "whole"
    assert not (out / "attention_weights.npz").exists()
    _png_is_a_picture(out / "attention_heatmap.png")  # the rest is all there
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["attention_weights"] is None
    assert analysis["notes"] == [note.group(0).removeprefix("note: ")]

    window = _run(*args, "--window", "0:8,:", "--output-dir", "part", cwd=tmp_path)
    assert window.returncode == 0 and "note:" not in window.stderr, window.stderr
    with np.load(tmp_path / "part" / "attention_weights.npz") as npz:
        assert npz["multi_head_attention_0"].shape == (1, 2, 8, 32)
    bad = _run(*args[:-1], "lots", cwd=tmp_path)
    assert bad.returncode == 2 and "'lots' is not a size" in bad.stderr


def test_bad_arguments_fail_with_a_message(tmp_path):
    source = tmp_path / "bad.neural"
    source.write_text("network Bad {\n  input: (10, 16)\n  layers:\n    Dense(units=\n}\n")
    result = _run("visualize", str(source), "--attention", "--backend", "pytorch", cwd=tmp_path)
    assert result.returncode == 1
    assert "bad.neural:" in result.stderr and "^" in result.stderr
    missing = _run("visualize", str(tmp_path / "nope.neural"), "--attention", cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    tokens = _run(
        "visualize",
        str(EXAMPLES / "basic_transformer.neural"),
        "--attention",
        "--backend",
        "pytorch",
        "--tokens",
        "a,b,c",
        cwd=tmp_path,
    )
    assert tokens.returncode == 1 and "3 tokens were given but the sequence length is 50" in (
        tokens.stderr
    )


@pytest.mark.slow
def test_export_weights_then_view_them_in_the_other_backend(tmp_path, client):
    model_file = EXAMPLES / "text_classification.neural"
    exported = _run(
        "export-weights",
        str(model_file),
        "--backend",
        "pytorch",
        "--seed",
        "5",
        "-o",
        str(tmp_path / "w.npz"),
        "--quiet",
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr
    ids = np.random.default_rng(3).integers(1, 5000, size=(2, 32))
    ids[1, 20:] = 0
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "out"
    shown = _run(
        "visualize",
        str(model_file),
        "--attention",
        "--backend",
        "tensorflow",
        "--weights",
        str(tmp_path / "w.npz"),
        "--data",
        str(tmp_path / "ids.npy"),
        "--batch-index",
        "1",
        "--output-dir",
        str(out),
        "--quiet",
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    # the same model (seed 5) served by PyTorch, for comparison
    reference = client.compile_file(model_file, backend="pytorch", seed=5)
    want = dict(client.extract_attention(reference, ids))
    with np.load(out / "attention_weights.npz") as got:
        for name, attention in want.items():
            assert got[name].shape == (2, *attention.shape[1:])
            np.testing.assert_allclose(got[name], attention, atol=1e-5, err_msg=name)
    page = (out / "attention_interactive.html").read_text()
    blob = re.search(r'id="attention-data">(.*?)</script>', page, re.S)
    assert blob is not None and json.loads(blob.group(1))["batch_index"] == 1
    assert re.search(r"item 1 (—|\\u2014) transformer_encoder_0", page)  # the item picker


# --- the demo: trained toy models, text in, every figure format, the console ----------------

TRAINED = EXAMPLES / "trained"
DEMO_TEXT = "the cat sat on the mat and the dog ran away ."
DEMO_TOKENS = DEMO_TEXT.split()
PAGE_BUDGET = 2 * 1024 * 1024  # the demo's page, plotly.js included (README)


def _demo_args(model: str) -> list[str]:
    """What `make demo` passes (Makefile's DEMO_ARGS) for one trained model."""
    return [
        "visualize",
        str(TRAINED / f"{model}.neural"),
        "--weights",
        str(TRAINED / f"{model}.npz"),
        "--attention",
        "--backend",
        "pytorch",
        "--vocab",
        str(EXAMPLES / "toy_vocab.txt"),
        "--text",
        DEMO_TEXT,
    ]


@pytest.mark.slow
def test_demo_shows_the_trained_heads_with_token_labels_in_every_format(tmp_path):
    out = tmp_path / "out"
    result = _run(
        *_demo_args("previous_and_first"),
        "--figure-format",
        "png,svg",
        "--figure-format",
        "pdf",
        "--dpi",
        "120",
        "--format",
        "json",
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is one JSON document
    assert report["tokens"] == DEMO_TOKENS
    layer = report["layers"]["multi_head_attention_0"]
    # The trained heads: one attends to the first token, one to the previous token.
    assert sorted(layer["pattern_per_head"]) == ["local", "prefix_suffix"]
    # The progress bar counted bytes and layers on stderr.
    assert "attention for display" in result.stderr and "layers 1/1" in result.stderr
    assert re.search(r"\d(\.\d+)?k?B", result.stderr)

    page = (out / "attention_interactive.html").read_text()
    assert len(page.encode()) < PAGE_BUDGET
    data = json.loads(re.search(r'id="attention-data">(.*?)</script>', page, re.S).group(1))
    assert data["tokens"] == DEMO_TOKENS
    (entry,) = data["layers"]
    assert entry["x"][:3] == ["the (0)", "cat", "sat"]  # repeated tokens keep their position
    assert sorted(entry["metrics"]["pattern"]) == ["local", "prefix_suffix"]
    assert data["rollout"]["display_shape"] == [12, 12]

    for stem, panels in (("attention_heatmap", 1), ("attention_heads_multi_head_attention_0", 2)):
        with Image.open(out / f"{stem}.png") as image:
            assert image.info["dpi"][0] == pytest.approx(120, abs=1)
        _png_is_a_picture(out / f"{stem}.png")
        svg = (out / f"{stem}.svg").read_text()
        assert len(re.findall(r'<image\b[^>]*id="heatmap-', svg)) == panels
        assert ">sat<" in svg or "sat" in svg
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    if shutil.which("pdfinfo"):
        info = subprocess.run(
            ["pdfinfo", str(out / "attention_figures.pdf")], capture_output=True, text=True
        )
        assert re.search(r"^Pages:\s+2$", info.stdout, re.M)  # the heatmap and one head grid


@pytest.mark.slow
def test_demo_anti_diagonal_quietly_as_a_table(tmp_path):
    result = _run(
        *_demo_args("reverse"), "--quiet", "--output-dir", str(tmp_path / "o"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet: no progress lines, no bar
    assert "Found 1 attention layer" in result.stdout
    assert re.search(r"^\s+[01]\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+sparse$", result.stdout, re.M)
    with np.load(tmp_path / "o" / "attention_weights.npz") as npz:
        attention = npz["multi_head_attention_0"][0]
    # The anti-diagonal: query i looks at key n-1-i.
    best = attention.max(axis=0).argmax(axis=-1)
    assert (best == np.arange(12)[::-1]).mean() >= 0.9


def test_text_needs_known_ids_and_the_layer_table_stays(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[UNK]", *[f"w{i}" for i in range(15)], "zebra"]) + "\n")
    model = str(TRAINED / "previous_token.neural")
    refused = _run(
        "visualize",
        model,
        "--attention",
        "--backend",
        "pytorch",
        "--vocab",
        str(vocab),
        "--text",
        "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 zebra",
        "--quiet",
        cwd=tmp_path,
    )
    assert refused.returncode == 1
    assert "token 'zebra' has id 16 but `embedding_0` takes ids in [0, 16)" in refused.stderr
    table = _run("visualize", model, "--backend", "pytorch", "--quiet", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert re.search(r"multi_head_attention_0\s+MultiHeadAttention.*\[attention\]", table.stdout)
    as_json = _run(
        "visualize", model, "--backend", "pytorch", "--quiet", "--format", "json", cwd=tmp_path
    )
    layers = json.loads(as_json.stdout)["layers"]
    assert [la["name"] for la in layers if la["attention"]] == ["multi_head_attention_0"]


TOKENIZED = """
network Tokenized {
  input: (None,)
  layers:
    Embedding(input_dim=30522, output_dim=16)
    PositionalEncoding(max_len=512, kind="learned")
    TransformerEncoder(num_heads=2, ff_dim=32)
}
"""


def test_visualize_with_a_checkpoint_tokenizer_labels_and_refuses_long_text(tmp_path):
    sys.path.insert(0, str(ROOT / "examples" / "pretrained"))
    from fetch_minilm import minilm_dir
    from transformers import AutoTokenizer

    folder = minilm_dir()
    model = tmp_path / "tokenized.neural"
    model.write_text(TOKENIZED, encoding="utf-8")
    text = "[CLS] The quick brown fox jumps over the lazy dog. [SEP]"
    run = _run(
        "visualize", str(model), "--attention", "--backend", "pytorch", "--quiet",
        "--tokenizer", str(folder), "--text", text, "--output-dir", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    hf = AutoTokenizer.from_pretrained(folder)
    ids = hf(text)["input_ids"]
    # the written [CLS] and [SEP] stay whole (not "[", "cl", "##s", "]") and, as transformers
    # does, the checkpoint's own [CLS] ... [SEP] are added around them: 10 words + 4
    assert len(ids) == 14 and ids[:2] == [101, 101] and ids[-2:] == [102, 102]
    written = json.loads((tmp_path / "out" / "analysis.json").read_text(encoding="utf-8"))
    assert written["token_ids"] == ids
    assert written["tokenizer_tokens"] == hf.convert_ids_to_tokens(ids) == written["tokens"]
    with np.load(tmp_path / "out" / "attention_weights.npz") as npz:
        (layer,) = npz.files
        assert npz[layer].shape == (1, 2, 14, 14)

    long = _run(
        "visualize", str(model), "--attention", "--backend", "pytorch", "--quiet",
        "--tokenizer", str(folder), "--text", "word " * 700, "--output-dir", "long",
        cwd=tmp_path,
    )  # fmt: skip
    assert long.returncode == 1
    assert "the text is 702 tokens but the model takes at most 512 positions" in long.stderr
    assert "shorten it" in long.stderr
    assert not (tmp_path / "long" / "analysis.json").exists()
