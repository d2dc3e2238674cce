"""The checkpoint families `_checkpoint.import_checkpoint` maps: one function per family
(`FAMILIES`), each from a Hugging Face config and its tensors to the `.neural` layers, the
neutral weights (`backends/weights.py`'s Keras layouts) and how each was made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neural_attn.errors import InvalidInputError

# transformers' activation names -> ours; any other is refused.
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",  # the same tanh formula, written differently
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}


def _refuse(source: Path, why: str, instead: str) -> InvalidInputError:
    return InvalidInputError(f"cannot import {source}: {why}; {instead}")


class _Source:
    """The checkpoint's tensors under one prefix (`bert.`, `transformer.`, or none); records
    which were used so the rest can be named as dropped."""

    def __init__(self, tensors: dict[str, np.ndarray], prefix: str) -> None:
        self.tensors, self.prefix = tensors, prefix
        self.used: set[str] = set()

    def __call__(self, name: str, *alternatives: str) -> np.ndarray:
        for candidate in (name, *alternatives):
            key = self.prefix + candidate
            if key in self.tensors:
                self.used.add(key)
                return np.asarray(self.tensors[key], dtype=np.float32)
        raise InvalidInputError(f"the checkpoint has no tensor {self.prefix + name}")

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors


def _prefixed(tensors: dict[str, np.ndarray], probe: str, prefixes: tuple[str, ...]) -> _Source:
    for prefix in ("", *prefixes):
        if prefix + probe in tensors:
            return _Source(tensors, prefix)
    raise InvalidInputError(f"the checkpoint has no {probe} (under {', '.join(prefixes)} or none)")


# ------------------------------------------------------------------------- families


@dataclass
class _Mapped:
    """One family's result: the .neural layers, the neutral weights and what was said."""

    layers: list[str]
    weights: dict[str, np.ndarray]
    mapping: list[dict[str, str]]
    max_positions: int
    vocab_size: int
    used: set[str]  # the checkpoint tensors the mapping read; the others are dropped
    notes: list[str] = field(default_factory=list)


def _activation(source: Path, name: str) -> str:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise _refuse(
            source,
            f"its activation {name!r} has no exact counterpart in the DSL",
            f"the DSL has {', '.join(sorted(set(_ACTIVATIONS.values())))}",
        ) from None


def _heads(source: Path, width: int, heads: int) -> int:
    if width % heads:
        raise _refuse(source, f"its width {width} is not a multiple of {heads} heads", "check it")
    return width // heads


class _Writer:
    """Collects neutral weights and the report's mapping rows."""

    def __init__(self) -> None:
        self.weights: dict[str, np.ndarray] = {}
        self.mapping: list[dict[str, str]] = []

    def put(self, key: str, value: np.ndarray, source: str, how: str = "as is") -> None:
        self.weights[key] = np.ascontiguousarray(value, dtype=np.float32)
        self.mapping.append({"from": source, "to": key, "how": how})

    def norm(self, key: str, get: _Source, name: str) -> None:
        self.put(f"{key}/gamma", get(f"{name}.weight", f"{name}.gamma"), f"{name}.weight")
        self.put(f"{key}/beta", get(f"{name}.bias", f"{name}.beta"), f"{name}.bias")

    def linear(self, key: str, get: _Source, name: str) -> None:
        """A torch Linear (out, in) as a Keras kernel (in, out)."""
        self.put(f"{key}/kernel", get(f"{name}.weight").T, f"{name}.weight", "transposed")
        self.put(f"{key}/bias", get(f"{name}.bias"), f"{name}.bias")

    def attention(
        self, key: str, heads: int, parts: dict[str, tuple[np.ndarray, np.ndarray, str, str]]
    ) -> None:
        """q/k/v/output from kernels already (in, out) and their biases."""
        for part, (kernel, bias, origin, how) in parts.items():
            d_in, d_out = kernel.shape
            if part == "output":
                self.put(f"{key}/output_kernel", kernel.reshape(heads, -1, d_out), origin, how)
                self.put(f"{key}/output_bias", bias, origin.replace("weight", "bias"))
            else:
                self.put(f"{key}/{part}_kernel", kernel.reshape(d_in, heads, -1), origin, how)
                self.put(
                    f"{key}/{part}_bias", bias.reshape(heads, -1), origin.replace("weight", "bias")
                )


def _torch_attention(get: _Source, names: dict[str, str]) -> dict[str, Any]:
    return {
        part: (
            get(f"{name}.weight").T,
            get(f"{name}.bias"),
            f"{name}.weight",
            "transposed, split by head",
        )
        for part, name in names.items()
    }


def _bert_refusals(source: Path, config: dict[str, Any]) -> None:
    """Refuse the BERT-like configurations the DSL cannot express exactly."""
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise _refuse(
            source,
            f"position_embedding_type={config['position_embedding_type']!r} (relative positions)",
            "only absolute learned positions map exactly onto PositionalEncoding",
        )
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise _refuse(source, "it is a decoder with cross-attention", "import the encoder alone")
    if config.get("rope_scaling") or config.get("rotary_dim"):
        raise _refuse(source, "it uses rotary positions", "rotary positions are not in the DSL")


def _bert_positions(
    config: dict[str, Any], get: _Source, positions: np.ndarray
) -> tuple[np.ndarray, str, list[str]]:
    """The position table as PositionalEncoding reads it, how it was made, and its notes."""
    notes: list[str] = []
    how = "as is"
    if config["model_type"] in ("roberta", "xlm-roberta"):
        # RoBERTa numbers positions from padding_idx + 1 (for input without padding).
        skip = int(config.get("pad_token_id", 1)) + 1
        positions = positions[skip:]
        how = f"rows {skip}.. (RoBERTa counts positions from pad_token_id + 1)"
        notes.append(
            f"positions start at row {skip} as RoBERTa counts them; exact for input without "
            "padding tokens"
        )
    if get.has("embeddings.token_type_embeddings.weight"):
        types = get("embeddings.token_type_embeddings.weight")
        positions = positions + types[0]
        how += "; + token_type_embeddings[0]"
        if types.shape[0] > 1:
            notes.append(
                "token type 0 is folded into the positions: one segment only, sentence pairs "
                "(token type 1) are not represented"
            )
    return positions, how, notes


def _bert_like(source: Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> _Mapped:
    _bert_refusals(source, config)
    width, heads, depth = (
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_hidden_layers"],
    )
    _heads(source, width, heads)
    eps = float(config.get("layer_norm_eps", 1e-12))
    act = _activation(source, config.get("hidden_act", "gelu"))
    get = _prefixed(tensors, "embeddings.word_embeddings.weight", ("bert.", "roberta.", "model."))
    out = _Writer()
    words = get("embeddings.word_embeddings.weight")
    out.put("embedding_0/embeddings", words, "embeddings.word_embeddings.weight")
    positions = get("embeddings.position_embeddings.weight")
    positions, how, notes = _bert_positions(config, get, positions)
    out.put(
        "positional_encoding_0/embeddings", positions, "embeddings.position_embeddings.weight", how
    )
    out.norm("layer_normalization_0", get, "embeddings.LayerNorm")
    _encoder_stack(out, get, "encoder.layer.", depth, heads, _BERT_LAYER)
    layers = _encoder_layers(
        words.shape[0],
        width,
        positions.shape[0],
        heads,
        config["intermediate_size"],
        float(config.get("hidden_dropout_prob", 0.1)),
        depth,
        act,
        eps,
    )
    return _Mapped(
        layers, out.weights, out.mapping, positions.shape[0], words.shape[0], get.used, notes
    )


# One encoder layer's sub-modules (under `{stack}{i}.`) for each neutral part of the block.
_BERT_LAYER = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "output": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "ffn_1": "intermediate.dense",
    "ffn_2": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_DISTILBERT_LAYER = {
    "query": "attention.q_lin",
    "key": "attention.k_lin",
    "value": "attention.v_lin",
    "output": "attention.out_lin",
    "attention_norm": "sa_layer_norm",
    "ffn_1": "ffn.lin1",
    "ffn_2": "ffn.lin2",
    "ffn_norm": "output_layer_norm",
}


def _encoder_stack(
    out: _Writer, get: _Source, stack: str, depth: int, heads: int, parts: dict[str, str]
) -> None:
    """The post-norm encoder layers of a torch checkpoint (torch Linear layouts) as
    transformer_encoder_0.. ; `parts` names each neutral part's sub-module in one layer."""
    for i in range(depth):
        key, base = f"transformer_encoder_{i}", f"{stack}{i}."
        names = {p: base + parts[p] for p in ("query", "key", "value", "output")}
        out.attention(f"{key}/attention", heads, _torch_attention(get, names))
        out.norm(f"{key}/attention_norm", get, base + parts["attention_norm"])
        out.linear(f"{key}/ffn_1", get, base + parts["ffn_1"])
        out.linear(f"{key}/ffn_2", get, base + parts["ffn_2"])
        out.norm(f"{key}/ffn_norm", get, base + parts["ffn_norm"])


def _encoder_layers(
    vocab: int,
    width: int,
    positions: int,
    heads: int,
    ff: int,
    dropout: float,
    depth: int,
    act: str,
    eps: float,
) -> list[str]:
    """The .neural layers of a BERT-like encoder: embeddings, learned positions, their norm,
    then the post-norm blocks."""
    return [
        f"Embedding(input_dim={vocab}, output_dim={width})",
        f'PositionalEncoding(max_len={positions}, kind="learned")',
        f"LayerNormalization(epsilon={eps!r})",
        f"TransformerEncoder(num_heads={heads}, ff_dim={ff}, dropout={dropout!r}, "
        f'num_layers={depth}, activation="{act}", epsilon={eps!r})',
    ]


def _distilbert(source: Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> _Mapped:
    width, heads, depth = config["dim"], config["n_heads"], config["n_layers"]
    _heads(source, width, heads)
    act = _activation(source, config.get("activation", "gelu"))
    get = _prefixed(tensors, "embeddings.word_embeddings.weight", ("distilbert.",))
    out = _Writer()
    words = get("embeddings.word_embeddings.weight")
    out.put("embedding_0/embeddings", words, "embeddings.word_embeddings.weight")
    positions = get("embeddings.position_embeddings.weight")
    out.put("positional_encoding_0/embeddings", positions, "embeddings.position_embeddings.weight")
    out.norm("layer_normalization_0", get, "embeddings.LayerNorm")
    _encoder_stack(out, get, "transformer.layer.", depth, heads, _DISTILBERT_LAYER)
    layers = _encoder_layers(
        words.shape[0],
        width,
        positions.shape[0],
        heads,
        config["hidden_dim"],
        float(config.get("dropout", 0.1)),
        depth,
        act,
        1e-12,
    )
    return _Mapped(layers, out.weights, out.mapping, positions.shape[0], words.shape[0], get.used)


def _gpt2(source: Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> _Mapped:
    if config.get("add_cross_attention"):
        raise _refuse(source, "it has cross-attention", "import a decoder-only GPT-2")
    if config.get("scale_attn_by_inverse_layer_idx"):
        raise _refuse(
            source,
            "scale_attn_by_inverse_layer_idx=true (scores scaled by 1 / layer)",
            "the DSL's attention scales by 1 / sqrt(key_dim) only",
        )
    if not config.get("scale_attn_weights", True):
        raise _refuse(source, "scale_attn_weights=false", "the DSL always scales by sqrt(key_dim)")
    width, heads, depth = config["n_embd"], config["n_head"], config["n_layer"]
    _heads(source, width, heads)
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    act = _activation(source, config.get("activation_function", "gelu_new"))
    ff = config.get("n_inner") or 4 * width
    get = _prefixed(tensors, "wte.weight", ("transformer.",))
    out = _Writer()
    words = get("wte.weight")
    out.put("embedding_0/embeddings", words, "wte.weight")
    positions = get("wpe.weight")
    out.put("positional_encoding_0/embeddings", positions, "wpe.weight")
    for i in range(depth):
        key, base = f"transformer_decoder_{i}", f"h.{i}."
        # GPT-2's Conv1D weights are already (in, out); c_attn holds q, k and v side by side.
        qkv_w, qkv_b = get(f"{base}attn.c_attn.weight"), get(f"{base}attn.c_attn.bias")
        origin = f"{base}attn.c_attn.weight"
        parts = {
            part: (
                qkv_w[:, j * width : (j + 1) * width],
                qkv_b[j * width : (j + 1) * width],
                origin,
                f"columns {j * width}..{(j + 1) * width - 1}, split by head",
            )
            for j, part in enumerate(("query", "key", "value"))
        }
        parts["output"] = (
            get(f"{base}attn.c_proj.weight"),
            get(f"{base}attn.c_proj.bias"),
            f"{base}attn.c_proj.weight",
            "split by head",
        )
        out.attention(f"{key}/attention", heads, parts)
        out.norm(f"{key}/attention_norm", get, f"{base}ln_1")
        out.put(f"{key}/ffn_1/kernel", get(f"{base}mlp.c_fc.weight"), f"{base}mlp.c_fc.weight")
        out.put(f"{key}/ffn_1/bias", get(f"{base}mlp.c_fc.bias"), f"{base}mlp.c_fc.bias")
        out.put(f"{key}/ffn_2/kernel", get(f"{base}mlp.c_proj.weight"), f"{base}mlp.c_proj.weight")
        out.put(f"{key}/ffn_2/bias", get(f"{base}mlp.c_proj.bias"), f"{base}mlp.c_proj.bias")
        out.norm(f"{key}/ffn_norm", get, f"{base}ln_2")
    out.norm("layer_normalization_0", get, "ln_f")
    layers = [
        f"Embedding(input_dim={words.shape[0]}, output_dim={width})",
        f'PositionalEncoding(max_len={positions.shape[0]}, kind="learned")',
        f"TransformerDecoder(num_heads={heads}, ff_dim={ff}, "
        f"dropout={float(config.get('resid_pdrop', 0.1))!r}, num_layers={depth}, "
        f'activation="{act}", norm_first=true, epsilon={eps!r})',
        f"LayerNormalization(epsilon={eps!r})",
    ]
    return _Mapped(layers, out.weights, out.mapping, positions.shape[0], words.shape[0], get.used)


Family = Callable[[Path, dict[str, Any], dict[str, np.ndarray]], _Mapped]
FAMILIES: dict[str, Family] = {
    "bert": _bert_like,
    "roberta": _bert_like,
    "distilbert": _distilbert,
    "gpt2": _gpt2,
}
