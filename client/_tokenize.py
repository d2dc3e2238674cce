"""Text in, token ids and labels out: a vocabulary file and a small word-piece tokenizer.

``vocab.txt`` holds one token a line; a token's id is its line number from 0 (the BERT
``vocab.txt`` convention). Text is split on whitespace, punctuation is split off words, and
each word is looked up whole, then lower-cased, then as greedy longest-match word pieces
(``play`` ``##ing``) when the vocabulary has ``##`` continuations. A word none of that covers
becomes the vocabulary's unknown token (``[UNK]``, ``<unk>`` or ``[unk]``); without one it is
an error naming the word. No model is run here: ids are checked against the range the
server says the model's ``Embedding`` takes.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neural_attn.errors import InvalidInputError

__all__ = ["Tokens", "Vocabulary", "check_ids", "embedding_range", "tokenize"]

UNKNOWN_TOKENS = ("[UNK]", "<unk>", "[unk]", "<UNK>")
_CONTINUATION = "##"
# How the server describes an Embedding input (CompileResult.inputs[0].description).
_RANGE = re.compile(r"token ids in \[0, (\d+)\) through `([^`]+)`")


@dataclass(frozen=True)
class Vocabulary:
    """Tokens by id (``tokens[i]`` has id ``i``) and the unknown token, if the file has one."""

    tokens: tuple[str, ...]
    source: str = "<vocabulary>"
    ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids: dict[str, int] = {}
        for i, token in enumerate(self.tokens):
            ids.setdefault(token, i)  # a repeated line keeps its first id
        object.__setattr__(self, "ids", ids)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read ``vocab.txt``: one token a line, ids from 0 in file order."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInputError(f"cannot read the vocabulary {file}: {exc}") from None
        tokens = tuple(line.strip() for line in text.splitlines())
        while tokens and not tokens[-1]:
            tokens = tokens[:-1]
        if not tokens:
            raise InvalidInputError(f"the vocabulary {file} has no tokens (one token a line)")
        return cls(tokens, source=str(file))

    @property
    def unknown(self) -> str | None:
        return next((t for t in UNKNOWN_TOKENS if t in self.ids), None)

    @property
    def has_pieces(self) -> bool:
        return any(t.startswith(_CONTINUATION) for t in self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Tokens:
    """Token ids (one sequence) and the label drawn for each."""

    ids: tuple[int, ...]
    labels: tuple[str, ...]

    def as_batch(self) -> np.ndarray:
        """``(1, seq)`` int64 ids, the input of a model that starts with ``Embedding``."""
        return np.asarray([self.ids], dtype=np.int64)


def _words(text: str) -> list[str]:
    """Whitespace split, with punctuation split off as tokens of its own."""
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for ch in chunk:
            if unicodedata.category(ch).startswith("P"):
                if current:
                    words.append(current)
                words.append(ch)
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


def _pieces(word: str, vocab: Vocabulary) -> list[str] | None:
    """Greedy longest-match-first word pieces, or None when some part is not covered."""
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else _CONTINUATION + word[start:end]
            if piece in vocab.ids:
                pieces.append(piece)
                start = end
                break
        else:
            return None
    return pieces


def tokenize(text: str, vocab: Vocabulary | str | os.PathLike[str]) -> Tokens:
    """Split ``text`` and look each word up in ``vocab`` (a ``Vocabulary`` or a file)."""
    if not isinstance(vocab, Vocabulary):
        vocab = Vocabulary.load(vocab)
    words = _words(text)
    if not words:
        raise InvalidInputError("the text has no words to tokenize")
    ids: list[int] = []
    labels: list[str] = []
    for word in words:
        for candidate in (word, word.lower()):
            if candidate in vocab.ids:
                found = [candidate]
                break
        else:
            found = None
            if vocab.has_pieces:
                found = _pieces(word, vocab) or _pieces(word.lower(), vocab)
        if found is None:
            if vocab.unknown is None:
                raise InvalidInputError(
                    f"{word!r} is not in the vocabulary {vocab.source} and it has no unknown "
                    f"token; add one of {', '.join(UNKNOWN_TOKENS[:2])} or the word"
                )
            ids.append(vocab.ids[vocab.unknown])
            labels.append(f"{word} {vocab.unknown}")
            continue
        for piece in found:
            ids.append(vocab.ids[piece])
            labels.append(piece)
    return Tokens(tuple(ids), tuple(labels))


def embedding_range(descriptions: Sequence[str]) -> tuple[int, str] | None:
    """``(input_dim, layer)`` of the model's Embedding, from the server's input descriptions."""
    for text in descriptions:
        match = _RANGE.search(text)
        if match:
            return int(match.group(1)), match.group(2)
    return None


def check_ids(tokens: Tokens, limit: int, layer: str) -> None:
    """Refuse ids the embedding has no row for, naming the first such token."""
    for token_id, label in zip(tokens.ids, tokens.labels, strict=True):
        if not 0 <= token_id < limit:
            raise InvalidInputError(
                f"token {label!r} has id {token_id} but `{layer}` takes ids in [0, {limit}); "
                "use the vocabulary the model was trained with"
            )
