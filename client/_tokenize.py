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

import functools
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neural_attn.errors import InvalidInputError

__all__ = [
    "PretrainedTokenizer",
    "Tokens",
    "Vocabulary",
    "check_ids",
    "readable",
    "tokenize",
]

UNKNOWN_TOKENS = ("[UNK]", "<unk>", "[unk]", "<UNK>")
_CONTINUATION = "##"


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
    """Token ids (one sequence), the label drawn for each and the tokenizer's own tokens
    (``Ġquick`` where the label is ``␣quick``; the labels when not given)."""

    ids: tuple[int, ...]
    labels: tuple[str, ...]
    pieces: tuple[str, ...] = ()

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


def check_ids(tokens: Tokens, limit: int, layer: str) -> None:
    """Refuse ids the embedding has no row for, naming the first such token."""
    for token_id, label in zip(tokens.ids, tokens.labels, strict=True):
        if not 0 <= token_id < limit:
            raise InvalidInputError(
                f"token {label!r} has id {token_id} but `{layer}` takes ids in [0, {limit}); "
                "use the vocabulary the model was trained with"
            )


# ----------------------------------------------------------- a checkpoint's own tokenizer


def _is_punctuation(ch: str) -> bool:
    """BERT's rule: ASCII symbols count as punctuation too ($, +, <, =, >, ^, `, |, ~)."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(
        lo <= cp <= hi
        for lo, hi in (
            (0x4E00, 0x9FFF),
            (0x3400, 0x4DBF),
            (0x20000, 0x2A6DF),
            (0x2A700, 0x2B73F),
            (0x2B740, 0x2B81F),
            (0x2B820, 0x2CEAF),
            (0xF900, 0xFAFF),
            (0x2F800, 0x2FA1F),
        )
    )


def _basic_words(text: str, *, lower: bool, strip_accents: bool) -> list[str]:
    """BERT's BasicTokenizer: clean, space out CJK characters, lower-case and strip accents,
    split punctuation off."""
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp in (0, 0xFFFD):
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            cleaned.append(" ")
        elif unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk(cp):
            cleaned.append(f" {ch} ")
        else:
            cleaned.append(ch)
    words: list[str] = []
    for word in unicodedata.normalize("NFC", "".join(cleaned)).split():
        if lower:
            word = word.lower()
        if strip_accents:
            word = "".join(
                c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
            )
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                words += [current] if current else []
                words.append(ch)
                current = ""
            else:
                current += ch
        words += [current] if current else []
    return words


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes (the inverse of its bytes_to_unicode)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def readable(piece: str) -> str:
    """A byte-level BPE piece as text: ``Ġquick`` -> ``␣quick``, ``Ċ`` -> ``↵``."""
    decoder = _byte_decoder()
    if not all(ch in decoder for ch in piece):
        return piece
    text = bytes(decoder[ch] for ch in piece).decode("utf-8", errors="replace")
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


@dataclass(frozen=True)
class PretrainedTokenizer:
    """A checkpoint's own tokenizer (``--tokenizer DIR``): ``tokenizer.json`` through the
    ``tokenizers`` library, else BERT's WordPiece ``vocab.txt`` done here as BertTokenizer does.

    ``encode`` gives the ids and tokens ``transformers``' AutoTokenizer gives on the same text,
    special tokens added as the checkpoint does; byte-level pieces get readable labels.
    """

    source: str
    max_length: int | None
    encode_text: Any = field(repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PretrainedTokenizer:
        where = Path(path)
        folder = where if where.is_dir() else where.parent
        config = _json(folder / "tokenizer_config.json")
        limit = _max_positions(folder, config)
        tokenizer_json = where if where.name == "tokenizer.json" else folder / "tokenizer.json"
        vocab = where if where.suffix == ".txt" else folder / "vocab.txt"
        if where.suffix != ".txt" and tokenizer_json.is_file():
            try:
                import tokenizers
            except ImportError:
                if not vocab.is_file():
                    raise InvalidInputError(
                        f"{tokenizer_json} needs the `tokenizers` library: pip install "
                        "'neural-attn[tokenizers]' (or pip install tokenizers)"
                    ) from None
            else:
                tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
                tok.no_truncation()  # never cut the text short without saying so
                tok.no_padding()
                byte_level = _json(tokenizer_json).get("decoder", {}) or {}
                return cls(
                    str(tokenizer_json), limit, _library(tok, byte_level.get("type") == "ByteLevel")
                )
        if vocab.is_file():
            return cls(str(vocab), limit, _wordpiece(Vocabulary.load(vocab), config, folder))
        raise InvalidInputError(
            f"{where} has no tokenizer.json or vocab.txt (give the imported folder or the file)"
        )

    def encode(self, text: str) -> Tokens:
        tokens: Tokens = self.encode_text(text)
        if not tokens.ids:
            raise InvalidInputError("the text has no tokens")
        if self.max_length is not None and len(tokens.ids) > self.max_length:
            raise InvalidInputError(
                f"the text is {len(tokens.ids)} tokens but the model takes at most "
                f"{self.max_length} positions ({self.source}); shorten it"
            )
        return tokens


def _json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as exc:
        raise InvalidInputError(f"{path} is not JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def _max_positions(folder: Path, config: dict[str, Any]) -> int | None:
    """The import report's positions, else tokenizer_config's model_max_length when sane."""
    report = _json(folder / "import_report.json").get("max_positions")
    if isinstance(report, int) and report > 0:
        return report
    limit = config.get("model_max_length")
    return int(limit) if isinstance(limit, int | float) and 0 < limit < 1e6 else None


def _library(tok: Any, byte_level: bool) -> Any:
    def encode(text: str) -> Tokens:
        found = tok.encode(text)
        labels = [readable(t) for t in found.tokens] if byte_level else list(found.tokens)
        return Tokens(tuple(found.ids), tuple(labels), tuple(found.tokens))

    return encode


def _wordpiece(vocab: Vocabulary, config: dict[str, Any], folder: Path) -> Any:
    specials = _json(folder / "special_tokens_map.json")

    def special(name: str, default: str) -> str:
        value = config.get(name) or specials.get(name) or default
        return str(value["content"] if isinstance(value, dict) else value)

    cls_, sep, unk = (
        special("cls_token", "[CLS]"),
        special("sep_token", "[SEP]"),
        special("unk_token", "[UNK]"),
    )
    never = {cls_, sep, unk, special("pad_token", "[PAD]"), special("mask_token", "[MASK]")}
    never = {t for t in never if t in vocab.ids}
    lower = bool(config.get("do_lower_case", True))
    strip = config.get("strip_accents")
    strip_accents = lower if strip is None else bool(strip)
    pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(never, key=len)[::-1]) + ")")

    def encode(text: str) -> Tokens:
        pieces = [cls_]
        for part in pattern.split(text) if never else [text]:
            if part in never:
                pieces.append(part)
                continue
            for word in _basic_words(part, lower=lower, strip_accents=strip_accents):
                found = _pieces(word, vocab) if len(word) <= 100 else None
                pieces += found if found is not None else [unk]
        pieces.append(sep)
        ids = tuple(vocab.ids[p] for p in pieces)
        return Tokens(ids, tuple(pieces), tuple(pieces))

    return encode
