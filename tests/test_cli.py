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
