"""`--tokenizer`: the ids and tokens transformers' AutoTokenizer makes, on the real MiniLM
tokenizer (tokenizer.json and the vocab.txt-only path) and on a byte-level BPE built here."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from neural_attn.client._tokenize import PretrainedTokenizer, readable
from neural_attn.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "pretrained"))
from fetch_minilm import minilm_dir  # noqa: E402

TEXTS = (
    "[CLS] The quick brown fox jumps over the lazy dog. [SEP]",
    "Café naïve résumé",
    "$5+3=8 <tag> a|b ~x^y",
    "中文 and 日本語",
    "  spaces\tand\nnewlines ",
    "don't stop-believing!!",
    "supercalifragilisticexpialidocious" * 4,
)


@pytest.fixture(scope="module")
def minilm() -> Path:
    return minilm_dir()


def _hf(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.txt only"])
def test_bert_ids_and_tokens_equal_autotokenizer(minilm: Path, tmp_path: Path, files: str) -> None:
    folder = minilm
    if files == "vocab.txt only":
        folder = tmp_path
        for name in ("vocab.txt", "tokenizer_config.json"):
            shutil.copy(minilm / name, folder / name)
    ours = PretrainedTokenizer.load(folder)
    assert ours.source.endswith(files.split()[0])
    hf = _hf(minilm)
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        got = ours.encode(text)
        assert list(got.ids) == ids, text
        assert list(got.pieces) == hf.convert_ids_to_tokens(ids) == list(got.labels), text
    first = ours.encode(TEXTS[0])
    assert first.pieces[:2] == ("[CLS]", "[CLS]") and len(first.ids) == 14  # as HF: not split


def test_text_longer_than_the_positions_is_refused(minilm: Path) -> None:
    with pytest.raises(InvalidInputError, match="at most 512 positions"):
        PretrainedTokenizer.load(minilm).encode("word " * 600)


def test_byte_level_bpe_equals_autotokenizer_and_reads_well(tmp_path: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["The quick brown fox jumps over the lazy dog.\nNaïve café, 日本.", "hello world"] * 50
    bpe.train_from_iterator(corpus, vocab_size=400, special_tokens=["<|endoftext|>"])
    GPT2TokenizerFast(tokenizer_object=bpe._tokenizer).save_pretrained(tmp_path)
    hf = _hf(tmp_path)
    ours = PretrainedTokenizer.load(tmp_path)
    text = "The quick fox\nsaw a café"
    ids = hf(text)["input_ids"]
    got = ours.encode(text)
    assert list(got.ids) == ids and list(got.pieces) == hf.convert_ids_to_tokens(ids)
    assert "Ġquick" in got.pieces and "␣quick" in got.labels  # no specials added, as GPT-2
    assert "".join(got.labels).replace("␣", " ").replace("↵", "\n") == text
    assert readable("Ċ") == "↵"


def test_missing_tokenizer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no tokenizer.json or vocab.txt"):
        PretrainedTokenizer.load(tmp_path)
