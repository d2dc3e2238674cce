"""Section 5: the pretrained MiniLM-L6 side by side with the peers.

- served ÷ transformers: warm ExtractAttention of the imported checkpoint (`neural-attn-client
  import`, weights sent with the compile) against a real gRPC server in its own process, every
  layer consumed into numpy, ÷ transformers' eager forward with `output_attentions=True` in a
  clean process of its own (torch and transformers only), at 128 and 512 tokens; target <= 1.3.
  Beside them the project's own pass of the same model and weights in a clean process (the
  engine without server or wire). The three are timed round by round, interleaved, so the
  VM's drift falls on each alike. At the longest size also float16 on the wire (half the
  bytes; the server's cast from float32 is what it adds).
- the page at 512 tokens: the installed CLI (`visualize --tokenizer --text`, embedded server)
  end to end, the size of attention_interactive.html (target <= 15 MB) and whether headless
  chromium draws it offline; beside it bertviz `head_view` on transformers' attention of the
  same text, when bertviz is installed (build time, HTML size).

    python bench/bench_pretrained.py [--sizes 128,512] [--backends pytorch,tensorflow]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    ROOT,
    CleanFloor,
    Row,
    describe,
    failed_row,
    interleaved,
    ratio_row,
    section_main,
    served,
    thread_note,
)
from _hf_floor import bench_ids

SECTION = "5"
PAGE_TOKENS = 512
VOCAB = 30522  # MiniLM's word pieces


def _minilm() -> Path:
    sys.path.insert(0, str(ROOT / "examples" / "pretrained"))
    from fetch_minilm import minilm_dir

    return minilm_dir()


def _served_rows(args, checkpoint: Path, imported: Path) -> list[Row]:
    from neural_attn.client import AttentionClient

    rows: list[Row] = []
    source = (imported / "model.neural").read_text(encoding="utf-8")
    weights = imported / "model.safetensors"
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with served("neural", args.device) as target, AttentionClient(target, timeout=600) as client:
        for backend in [b for b in args.backends.split(",") if b]:
            model = client.compile(source, backend=backend, weights=weights)
            project = {"backend": backend, "source": source, "weights": str(weights)}
            for seq in sizes:
                label = f"MiniLM-L6 6x12x{seq}² {backend}"
                try:
                    rows += _served_size(
                        client, model, label, seq, args, checkpoint, project, seq == max(sizes)
                    )
                except Exception as exc:  # noqa: BLE001 - report and go on
                    rows.append(failed_row(SECTION, label, describe(exc)))
    return rows


def _served_size(client, model, label, seq, args, checkpoint, project, half) -> list[Row]:
    """Served, the project's own pass and transformers, interleaved round by round, the two
    floors each in a clean process; at the longest size also float16 on the wire (half the
    bytes; the server's cast from float32 is what it adds)."""
    ids = bench_ids(VOCAB, seq)

    def call(dtype: str) -> Callable[[], None]:
        def once() -> None:
            got = [a for _, a in client.extract_attention(model, ids, dtype=dtype)]
            assert len(got) == 6, len(got)

        return once

    with (
        CleanFloor(kind="hf", checkpoint=str(checkpoint), seq=seq) as hf,
        CleanFloor(kind="project", device=args.device, vocab=VOCAB, seq=seq, **project) as own,
    ):
        fns = {"served": call("float32"), "pass": own, "hf": hf}
        if half:
            fns["float16"] = call("float16")
        t = interleaved(fns, budget_s=40.0 * args.budget, min_reps=5, max_reps=40)
    s, p, f = (t[k]["median_s"] for k in ("served", "pass", "hf"))
    reps = t["served"]["reps"]
    rows = [
        Row(SECTION, f"{label}: served ExtractAttention", s * 1e3, "ms", note=f"median of {reps}"),
        Row(
            SECTION,
            f"{label}: project pass, stream() (clean process)",
            p * 1e3,
            "ms",
            note=thread_note(own.threads),
        ),
        Row(
            SECTION,
            f"{label}: transformers eager, output_attentions (clean process)",
            f * 1e3,
            "ms",
            note=thread_note(hf.threads),
        ),
        ratio_row(SECTION, f"{label}: served ÷ transformers", s, f, target="<= 1.3"),
        ratio_row(
            SECTION,
            f"{label}: project pass ÷ transformers",
            p,
            f,
            note="the engine alone: no server, no gRPC",
        ),
    ]
    if half:
        h = t["float16"]["median_s"]
        rows += [
            Row(SECTION, f"{label}: served float16", h * 1e3, "ms", note=f"median of {reps}"),
            ratio_row(SECTION, f"{label}: served float16 ÷ float32", h, s),
        ]
    return rows


def _page_text() -> str:
    """510 ordinary words: one word piece each, so [CLS] + 510 + [SEP] is 512 tokens."""
    words = "the quick brown fox jumps over a lazy dog and then it sat on the mat".split()
    return " ".join(words[i % len(words)] for i in range(PAGE_TOKENS - 2))


def _chromium_draws(page: Path, profile: Path) -> bool:
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import chromium_dom, view_status

    return bool(view_status(chromium_dom(page.as_uri(), profile)))


def _page_rows(imported: Path, checkpoint: Path) -> list[Row]:
    rows: list[Row] = []
    cli = str(Path(sys.executable).parent / "neural-attn-client")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "page"
        t = time.perf_counter()
        subprocess.run(
            [
                cli,
                "visualize",
                str(imported / "model.neural"),
                "--weights",
                str(imported / "model.safetensors"),
                "--tokenizer",
                str(imported),
                "--text",
                _page_text(),
                "--attention",
                "--backend",
                "pytorch",
                "--output-dir",
                str(out),
                "--quiet",
            ],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t
        page = out / "attention_interactive.html"
        size = page.stat().st_size / 1e6
        try:
            drawn = (
                "drawn by headless chromium, offline"
                if _chromium_draws(page, Path(tmp) / "profile")
                else "chromium drew NOTHING"
            )
        except Exception as exc:  # noqa: BLE001 - no chromium here
            drawn = f"not drawn: {describe(exc)}"
        rows += [
            Row(
                SECTION,
                f"CLI visualize, MiniLM at {PAGE_TOKENS} tokens: wall",
                wall,
                "s",
                note="embedded server, import to page",
            ),
            Row(
                SECTION,
                f"CLI page at {PAGE_TOKENS} tokens: attention_interactive.html",
                size,
                "MB",
                "<= 15",
                size <= 15,
                note=drawn,
            ),
        ]
    rows += _bertviz_rows(checkpoint)
    return rows


_BERTVIZ = """
import sys, time, torch
from transformers import AutoModel, AutoTokenizer
from bertviz import head_view
path, text = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
ids = tok(text, return_tensors="pt")["input_ids"]
with torch.inference_mode():
    attention = model(ids, output_attentions=True).attentions
t = time.perf_counter()
html = head_view(attention, tok.convert_ids_to_tokens(ids[0]), html_action="return")
print(time.perf_counter() - t, len(html.data.encode()))
"""


def _bertviz_rows(checkpoint: Path) -> list[Row]:
    label = f"bertviz head_view at {PAGE_TOKENS} tokens"
    done = subprocess.run(
        [sys.executable, "-c", _BERTVIZ, str(checkpoint), _page_text()],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or ["failed"]
        return [failed_row(SECTION, label, f"{why[0][:200]} (pip install bertviz)")]
    build_s, size = done.stdout.split()
    return [
        Row(SECTION, f"{label}: build", float(build_s), "s", note="transformers' attention in"),
        Row(SECTION, f"{label}: HTML", int(size) / 1e6, "MB", note="needs a CDN (require.js, d3)"),
    ]


def run(args: argparse.Namespace) -> list[Row]:
    from neural_attn.client._checkpoint import import_checkpoint

    checkpoint = _minilm()
    with tempfile.TemporaryDirectory() as tmp:
        imported = Path(tmp) / "minilm"
        import_checkpoint(checkpoint, imported)
        rows = _served_rows(args, checkpoint, imported)
        if "pytorch" not in args.backends.split(","):
            return rows  # the page is measured once, with the PyTorch backend
        try:
            rows += _page_rows(imported, checkpoint)
        except Exception as exc:  # noqa: BLE001 - report and go on
            rows.append(failed_row(SECTION, "CLI page", describe(exc)))
    return rows


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="128,512")
    p.add_argument("--backends", default="pytorch,tensorflow")


if __name__ == "__main__":
    section_main(
        "5: pretrained MiniLM-L6, served ÷ transformers and the page vs bertviz",
        run,
        add_args=_add_args,
    )
