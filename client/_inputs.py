"""What `AttentionVisualizer` sends as input: text made into token ids with the model's own
vocabulary or tokenizer, token labels checked against the sequence length, and `Ask`, what
every call of one visualization asks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neural_attn.client._client import CompileResult
from neural_attn.client._tokenize import PretrainedTokenizer, Tokens, Vocabulary, check_ids
from neural_attn.client._tokenize import tokenize as split_text
from neural_attn.errors import InvalidInputError


def check_tokens(
    compiled: CompileResult, data: np.ndarray | None, tokens: Sequence[str] | None
) -> None:
    """`--tokens` must match the sequence length (of the data, else of the model)."""
    if not tokens:
        return
    if data is not None:
        length = int(np.shape(data)[1]) if np.ndim(data) >= 2 else None
    else:
        length = compiled.inputs[0].shape[1] if compiled.inputs else None
    if length is not None and length != len(tokens):
        raise InvalidInputError(
            f"{len(tokens)} tokens were given but the sequence length is {length}; "
            "give one token per position"
        )


def text_input(
    compiled: CompileResult,
    data: np.ndarray | None,
    tokens: Sequence[str] | None,
    text: str | None,
    vocabulary: Vocabulary | PretrainedTokenizer | str | os.PathLike[str] | None,
) -> tuple[np.ndarray | None, Sequence[str] | None, Tokens | None]:
    """Token ids and labels from `text` (and the Tokens), for a model that starts with
    `Embedding`."""
    if text is None:
        if vocabulary is not None:
            raise InvalidInputError("a vocabulary was given without text to tokenize")
        return data, tokens, None
    if data is not None or tokens:
        raise InvalidInputError("give text, or input data and tokens, not both")
    if vocabulary is None:
        raise InvalidInputError("text needs a vocabulary (vocab.txt, one token a line)")
    if not compiled.embedding_layer:
        raise InvalidInputError(
            f"`{compiled.network_name}` does not start with an Embedding layer, so it takes no "
            "token ids; give its input with input data instead of text"
        )
    if not isinstance(vocabulary, Vocabulary | PretrainedTokenizer) and (
        Path(vocabulary).is_dir() or Path(vocabulary).suffix.lower() == ".json"
    ):  # a checkpoint's tokenizer folder or its tokenizer.json (else a plain vocabulary)
        vocabulary = PretrainedTokenizer.load(vocabulary)
    if isinstance(vocabulary, PretrainedTokenizer):
        split = vocabulary.encode(text)
    else:
        split = split_text(text, vocabulary)
    check_ids(split, compiled.vocab_size, compiled.embedding_layer)
    return split.as_batch(), list(split.labels), split


@dataclass(frozen=True)
class Ask:
    """What every call of one `visualize_from_dsl` asks the server about."""

    model: CompileResult
    data: np.ndarray | None
    layers: list[str] | None
    tokens: Sequence[str] | None
    dtype: str

    @property
    def length(self) -> int:
        return len(self.tokens) if self.tokens else 0

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def options(self) -> dict[str, Any]:
        return {"layers": self.layers, "sequence_length": self.length, "dtype": self.dtype}
