"""A Hugging Face checkpoint becomes a readable `.neural` file and neutral weights.

    neural-attn-client import CKPT_DIR -o OUT_DIR

Reads ``config.json`` and ``model.safetensors`` (or the shards a ``model.safetensors.index.json``
names) with numpy alone, maps the tensors of one family onto the neutral names of the blocks the
`.neural` file declares (`backends/weights.py`: Keras layouts), and writes ``OUT_DIR/model.neural``,
``OUT_DIR/model.safetensors``, the tokenizer files and ``OUT_DIR/import_report.json``.

Families (`FAMILIES`): BERT (BertModel, BertFor*, sentence-transformers folders, MiniLM),
RoBERTa, DistilBERT (post-norm encoders) and GPT-2 (pre-norm causal decoder with a final norm).
A configuration a mapping cannot represent exactly is refused by name, with what to do instead;
nothing is ever imported approximately. Heads outside attention (pooler, LM and classifier
heads) are dropped and named in the file's header and the report.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neural_attn.client import _safetensors
from neural_attn.client._checkpoint_families import FAMILIES, _refuse
from neural_attn.errors import InvalidInputError

__all__ = ["FAMILIES", "ImportReport", "import_checkpoint"]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
# Buffers some checkpoints save beside the weights (position ids, GPT-2's causal mask): not
# weights, never reported as dropped.
_BUFFERS = (".position_ids", ".attn.bias", ".attn.masked_bias")


@dataclass
class ImportReport:
    """What `import_checkpoint` did: the files, and each checkpoint tensor's neutral name."""

    source: str
    family: str
    architecture: str
    network: str
    max_positions: int
    vocab_size: int
    files: list[str] = field(default_factory=list)
    mapping: list[dict[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"imported {self.source} ({self.architecture}, {self.family}) as `{self.network}`: "
            f"{len(self.mapping)} tensors, {self.max_positions} positions, vocabulary "
            f"{self.vocab_size}",
            *(f"  note: {n}" for n in self.notes),
        ]
        if self.dropped:
            lines.append(f"  dropped: {', '.join(_grouped(self.dropped))}")
        lines += [f"  wrote {f}" for f in self.files]
        return "\n".join(lines)


def _grouped(names: list[str]) -> list[str]:
    """`pooler.dense.weight`, `pooler.dense.bias` -> `pooler.dense.*`."""
    groups: dict[str, int] = {}
    for name in names:
        head = name.rsplit(".", 1)[0] + ".*" if "." in name else name
        groups[head] = groups.get(head, 0) + 1
    return list(groups)


# ------------------------------------------------------------------------- reading


def _config(source: Path) -> dict[str, Any]:
    path = source / "config.json"
    if not source.is_dir():
        raise InvalidInputError(f"{source} is not a folder (give the checkpoint's folder)")
    if not path.is_file():
        raise _refuse(source, "it has no config.json", "give a folder in the Hugging Face layout")
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise _refuse(source, f"config.json is not JSON ({exc})", "fix or re-save it") from None
    return config


def _tensors(source: Path) -> dict[str, np.ndarray]:
    single, index = source / "model.safetensors", source / "model.safetensors.index.json"
    if single.is_file():
        return _safetensors.read(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(_safetensors.read(source / shard))
        return tensors
    pickled = [
        n
        for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
        if (source / n).is_file()
    ]
    if pickled:
        raise _refuse(
            source,
            f"its weights are only in {pickled[0]} (pickled or framework-specific files are "
            "never read)",
            "re-save it with transformers: `AutoModel.from_pretrained(path)."
            "save_pretrained(path, safe_serialization=True)` writes model.safetensors",
        )
    raise _refuse(source, "it has no model.safetensors", "give a folder with safetensors weights")


# ------------------------------------------------------------------------- writing


def _network_name(config: dict[str, Any], family: str) -> str:
    origin = str(config.get("_name_or_path") or family).rstrip("/").rsplit("/", 1)[-1]
    words = [w for w in re.split(r"[^0-9A-Za-z]+", origin) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words) or family.capitalize()
    return name if name[0].isalpha() else f"Model{name}"


def _neural_text(report: ImportReport, layers: list[str]) -> str:
    header = [
        f"# Imported by `neural-attn-client import` from {report.source}",
        f"# ({report.architecture}, model_type {report.family}); weights: model.safetensors.",
        *(f"# Note: {n}." for n in report.notes),
    ]
    if report.dropped:
        header.append(
            "# Dropped (attention does not depend on them): " + ", ".join(_grouped(report.dropped))
        )
    body = "\n".join(f"    {layer}" for layer in layers)
    return "\n".join(header) + (
        f"\nnetwork {report.network} {{\n  input: (None,)\n  layers:\n{body}\n}}\n"
    )


def import_checkpoint(source: str | Path, output: str | Path) -> ImportReport:
    """Import the checkpoint folder `source` into `output` (created); see the module docstring."""
    source, output = Path(source), Path(output)
    config = _config(source)
    family = str(config.get("model_type", ""))
    if family not in FAMILIES:
        raise _refuse(
            source,
            f"model_type {family!r} is not a family we map",
            f"supported: {', '.join(FAMILIES)} (BERT incl. MiniLM and sentence-transformers, "
            "RoBERTa, DistilBERT, GPT-2 incl. DistilGPT2)",
        )
    tensors = _tensors(source)
    mapped = FAMILIES[family](source, config, tensors)
    report = ImportReport(
        source=str(source),
        family=family,
        architecture=", ".join(config.get("architectures") or [family]),
        network=_network_name(config, family),
        max_positions=mapped.max_positions,
        vocab_size=mapped.vocab_size,
        mapping=mapped.mapping,
        dropped=sorted(n for n in tensors if n not in mapped.used and not n.endswith(_BUFFERS)),
        notes=mapped.notes,
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / "model.neural").write_text(_neural_text(report, mapped.layers), encoding="utf-8")
    _safetensors.write(output / "model.safetensors", mapped.weights)
    report.files = ["model.neural", "model.safetensors"]
    for name in (*TOKENIZER_FILES, "config.json"):
        if (source / name).is_file() and (source / name).resolve() != (output / name).resolve():
            shutil.copyfile(source / name, output / name)
            report.files.append(name)
    report.files.append("import_report.json")
    (output / "import_report.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
    return report
