"""neural_attn/pooling.py: the block arithmetic equals a plain loop over the exact tensor, and its
one `Pooling` is what the server's reduction, the wire, the sinks, the figures, the page and the
progress bar all use; no other module pools."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neural_attn.pooling import Pooling, block_counts, block_size, pooled_length

REPO = Path(__file__).resolve().parents[1]


def _loop_pool(
    exact: np.ndarray, window: tuple[tuple[int, int], tuple[int, int]], target: int, mode: str
) -> np.ndarray:
    """The definition, written out: cut, then blocks of ceil(len / target), the last partial."""
    (q0, q1), (k0, k1) = window
    cut = exact[..., q0:q1, k0:k1].astype(np.float64)
    q, k = cut.shape[-2:]
    qb = 1 if not target or q <= target else -(-q // target)
    kb = 1 if not target or k <= target else -(-k // target)
    out = np.empty((*cut.shape[:-2], -(-q // qb), -(-k // kb)))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            block = cut[..., i * qb : (i + 1) * qb, j * kb : (j + 1) * kb]
            out[..., i, j] = block.max(axis=(-2, -1)) if mode == "max" else block.mean((-2, -1))
    return out


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize(
    ("source", "query", "key", "target"),
    [
        ((2, 3, 37, 37), None, None, 10),  # 37 / 10: blocks of 4, the last of 1
        ((1, 2, 67, 45), None, None, 16),  # blocks of 5 and 3, both last ones partial
        ((1, 1, 10, 300), None, None, 16),  # only the key axis is pooled
        ((2, 2, 50, 41), (5, 33), (10, 0), 6),  # windows (a stop of 0: the end), then pooled
        ((1, 2, 29, 29), (3, 20), (0, 29), 0),  # a window alone: exact
    ],
)
def test_pooled_equals_a_plain_loop_over_the_exact_tensor(source, query, key, target, mode):
    exact = np.random.default_rng(sum(source)).random(source, dtype=np.float32)
    pooling = Pooling.of(source, target, mode, query=query, key=key)
    window = (pooling.query, pooling.key)
    want = _loop_pool(exact, window, target, mode)
    got = pooling.apply(exact)
    assert got.shape[-2:] == pooling.shape == want.shape[-2:]
    if target:
        assert max(pooling.shape) <= target
    np.testing.assert_allclose(got, want, rtol=1e-12 if mode == "max" else 1e-6)
    (q0, q1), (k0, k1) = window
    assert block_counts(q1 - q0, pooling.query_block).sum() == q1 - q0
    assert block_counts(k1 - k0, pooling.key_block).sum() == k1 - k0
    assert pooling.pooled == (target > 0 and max(q1 - q0, k1 - k0) > target)


def test_block_arithmetic():
    assert [block_size(n, 512) for n in (1, 512, 513, 1024, 1025, 4096)] == [1, 1, 2, 2, 3, 8]
    assert block_size(10_000, 0) == 1  # a target of 0: not pooled
    assert [pooled_length(n, 3) for n in (1, 3, 4, 1100)] == [1, 1, 2, 367]
    assert block_counts(10, 4).tolist() == [4, 4, 2]


def test_the_servers_reduction_describes_itself_with_the_shared_value():
    from neural_attn.backends.streaming import Reduction

    reduction = Reduction(head=1, query=(5, 33), key=(10, 0), pool_size=6, pool_mode="mean")
    pooling = reduction.pooling((2, 4, 37, 37))
    assert pooling == Pooling.of((2, 4, 37, 37), 6, "mean", query=(5, 33), key=(10, 0))
    assert reduction.window(37, 37) == (5, 33, 10, 37)
    assert reduction.blocks(37, 37) == (pooling.query_block, pooling.key_block) == (5, 5)
    assert Reduction(head=1).pooling((2, 4, 37, 37)) is None  # one head, whole and exact


@pytest.mark.parametrize("pool_size", [0, 10])
def test_the_value_crosses_the_wire_unchanged(pool_size):
    from neural_attn.backends.streaming import Reduction
    from neural_attn.client._client import _layer_header
    from neural_attn.server import convert
    from neural_attn.v1 import attention_pb2 as pb

    shape = (2, 4, 37, 37)
    reduction = Reduction(query=(0, 30), pool_size=pool_size, pool_mode="max")
    message = convert.reduction_message(reduction, shape)
    assert message is not None
    chunk = pb.AttentionChunk(
        layer_name="enc", shape=[2, 4, 3, 3], dtype=pb.FLOAT32, reduction=message
    )
    header = _layer_header(chunk)
    assert header.pooling == reduction.pooling(shape)
    assert type(header.pooling) is Pooling


def test_sinks_figures_page_and_progress_take_the_same_value(tmp_path):
    import json

    from neural_attn.client import _sinks, render
    from neural_attn.client._progress import expected_bytes

    assert _sinks.Pooling is Pooling  # what a LayerHeader carries
    exact = np.random.default_rng(1).random((1, 2, 100, 70), dtype=np.float32)
    pooling = Pooling.of(exact.shape, 16, "max", query=(10, 0))
    pooled = pooling.apply(exact)

    fig = render.plot_heatmaps({"enc": pooled}, head=0, pooling={"enc": pooling})
    (ax,) = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert ax.get_title() == f"enc — head 0\n{pooling.note()}"
    grid = render.plot_attention_heads(pooled, pooling=pooling, title="enc")
    assert grid.get_suptitle() == f"enc — {pooling.note()}"

    page = render.create_interactive_html(
        {"enc": pooled}, pooling={"enc": pooling}, output_path=tmp_path / "page.html"
    )
    blob = re.search(r'id="attention-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S)
    assert blob is not None
    (layer,) = json.loads(blob.group(1))["layers"]
    assert layer["display_shape"] == list(pooling.shape) and layer["note"] == pooling.note()
    assert layer["pooling"]["query_range"] == [10, 100]

    # A display pooled on the server: what the progress bar expects is what arrives.
    shapes = [(1, 2, 1100, 1100), (2, 4, 37, 37)]
    want = sum(int(np.prod(s[:2])) * int(np.prod(Pooling.of(s, 512).shape)) * 4 for s in shapes)
    assert expected_bytes(shapes, itemsize=4, pool_size=512) == want


def test_only_the_shared_module_pools():
    """No other module of ours pools with numpy (its reduce is written once)."""
    sources = [*REPO.glob("neural_attn/*.py"), *REPO.glob("client/*.py"), *REPO.glob("server/*.py")]
    sources.append(REPO / "backends" / "streaming.py")
    pooling_by_numpy = [p.name for p in sources if "reduceat" in p.read_text(encoding="utf-8")]
    assert pooling_by_numpy == ["pooling.py"]


def test_render_and_the_page_do_not_import_each_other_back():
    tree = ast.parse((REPO / "client" / "_html.py").read_text(encoding="utf-8"))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    imported |= {
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    assert not {m for m in imported if m.endswith(".render") or ".render." in m}


def test_the_shared_module_needs_numpy_alone():
    code = (
        "import sys, neural_attn.pooling;"
        "heavy = ('grpc', 'google.protobuf', 'lark', 'torch', 'tensorflow', 'matplotlib');"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
