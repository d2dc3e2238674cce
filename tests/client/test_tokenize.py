"""Text to token ids and labels: whitespace, punctuation, word pieces, the unknown token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neural_attn.client._tokenize import (
    Vocabulary,
    check_ids,
    tokenize,
)
from neural_attn.errors import InvalidInputError

VOCAB = ["[PAD]", "[UNK]", "the", "cat", "sat", "on", "mat", ".", "play", "##ing", "##ed"]


@pytest.fixture()
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n\n", encoding="utf-8")
    return path


def test_words_map_to_their_line_numbers(vocab_file: Path) -> None:
    tokens = tokenize("The cat sat on the mat.", vocab_file)
    assert tokens.labels == ("the", "cat", "sat", "on", "the", "mat", ".")
    assert tokens.ids == (2, 3, 4, 5, 2, 6, 7)
    np.testing.assert_array_equal(tokens.as_batch(), [[2, 3, 4, 5, 2, 6, 7]])
    assert tokens.as_batch().dtype == np.int64


def test_word_pieces_and_unknown_words(vocab_file: Path) -> None:
    tokens = tokenize("playing played dog", Vocabulary.load(vocab_file))
    assert tokens.labels == ("play", "##ing", "play", "##ed", "dog [UNK]")
    assert tokens.ids == (8, 9, 8, 10, 1)


def test_a_vocabulary_without_unknown_token_names_the_word(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="'zebra' is not in the vocabulary"):
        tokenize("a zebra", path)


def test_empty_text_and_missing_file_are_refused(vocab_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no words"):
        tokenize("   ", vocab_file)
    with pytest.raises(InvalidInputError, match="cannot read the vocabulary"):
        tokenize("the", tmp_path / "missing.txt")


def test_ids_past_the_embedding_are_refused_naming_the_token(vocab_file: Path) -> None:
    tokens = tokenize("the cat mat", vocab_file)
    check_ids(tokens, 7, "embedding_0")
    with pytest.raises(InvalidInputError, match=r"token 'mat' has id 6 .* \[0, 5\)"):
        check_ids(tokens, 5, "embedding_0")


@pytest.mark.slow
def test_the_sdk_takes_text_and_shows_the_result_inline(client, tmp_path: Path) -> None:
    from neural_attn.client import AttentionVisualizer

    examples = Path(__file__).resolve().parents[2] / "examples" / "attention_examples"
    viz = AttentionVisualizer(
        examples / "trained" / "previous_token.neural",
        "pytorch",
        client=client,
        weights=examples / "trained" / "previous_token.npz",
    )
    text = "the cat sat on the mat and the dog ran away ."
    result = viz.visualize(None, text=text, tokenize=examples / "toy_vocab.txt")
    assert result["tokens"] == text.split()
    (attention,) = result["attention_weights"].values()
    assert attention.shape == (1, 2, 12, 12)
    assert result._repr_png_().startswith(b"\x89PNG")
    page = result._repr_html_()
    assert page.startswith("<iframe srcdoc=") and "mat" in page
    with pytest.raises(InvalidInputError, match="not both"):
        viz.visualize(np.zeros((1, 12), np.int64), text=text, tokenize=examples / "toy_vocab.txt")
    with pytest.raises(InvalidInputError, match="does not start with an Embedding"):
        AttentionVisualizer(
            examples / "basic_transformer.neural", "pytorch", client=client
        ).visualize(None, text=text, tokenize=examples / "toy_vocab.txt")


def test_roberta_byte_level_adds_its_specials_as_autotokenizer(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, RobertaTokenizerFast

    from neural_attn.client._tokenize import PretrainedTokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = ["The quick brown fox jumps over the lazy dog.\nhello world, café"] * 50
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(corpus, vocab_size=400, special_tokens=specials)
    RobertaTokenizerFast(tokenizer_object=bpe._tokenizer).save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ours = PretrainedTokenizer.load(tmp_path / "tokenizer.json")  # the file itself, too
    for text in ("The quick fox", "hello\nworld, café!", " lazy  dog "):
        ids = hf(text)["input_ids"]
        got = ours.encode(text)
        assert list(got.ids) == ids, text
        assert list(got.pieces) == hf.convert_ids_to_tokens(ids), text
        assert got.pieces[0] == "<s>" and got.pieces[-1] == "</s>"
        assert got.labels[0] == "<s>" and got.labels[-1] == "</s>"
        assert all("Ġ" not in label and "Ċ" not in label for label in got.labels)
