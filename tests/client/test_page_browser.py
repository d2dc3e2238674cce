"""The page in headless Chromium, driven over the DevTools protocol: no console errors, no
network, an overview that draws every head, and clicks and menus that change what is drawn."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from neural_attn.analysis import summarize_layers
from neural_attn.client.render import create_interactive_html

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium"),
]

TOKENS = ["The", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran"]
SEQ, HEADS = len(TOKENS), 3


def _layers() -> dict[str, np.ndarray]:
    """Layer 0 causal (exact zeros above the diagonal); layer 1 with a previous-token head."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, HEADS, SEQ, SEQ)) * 2
    upper = np.triu_indices(SEQ, 1)
    causal = logits.copy()
    causal[..., upper[0], upper[1]] = -np.inf
    previous = logits.copy()
    previous[:, 2] = -30.0
    previous[:, 2, np.arange(SEQ), np.maximum(np.arange(SEQ) - 1, 0)] = 30.0

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)

    return {"encoder_0": softmax(causal), "encoder_1": softmax(previous)}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, Any]]]:
    from cdp import Browser

    tmp = tmp_path_factory.mktemp("page")
    layers = _layers()
    analysis = summarize_layers(layers)
    path = create_interactive_html(
        layers, tokens=TOKENS, analysis=analysis, output_path=tmp / "attention_interactive.html"
    )
    browser = Browser(tmp / "profile")
    try:
        browser.open(path.resolve().as_uri())
        browser.wait_for("document.getElementById('view-status').dataset.drawn === '1'")
        yield browser, {"layers": layers, "analysis": analysis, "url": path.resolve().as_uri()}
    finally:
        browser.close()


def _status(browser: Any, element: str = "view-status") -> dict[str, str]:
    browser.wait_for(f"document.getElementById('{element}').dataset.drawn === '1'")
    found = f"document.getElementById('{element}').dataset"
    return dict(browser.evaluate(f"Object.assign({{}}, {found})"))


def _f16(matrix: np.ndarray) -> np.ndarray:
    return matrix.astype(np.float16).astype(np.float64)


def test_opens_offline_without_errors_on_the_mean_of_the_first_layer(session) -> None:
    browser, ctx = session
    status = _status(browser)
    assert status["title"] == "item 0 — encoder_0 — mean of 3 heads"
    assert status["shape"] == f"{SEQ}x{SEQ}"
    assert int(status["masked"]) == SEQ * (SEQ - 1) // 2  # the causal triangle, not zeros
    mean = ctx["layers"]["encoder_0"][0].astype(np.float64).mean(0)
    assert float(status["sum"]) == pytest.approx(_f16(mean).sum(), rel=1e-9)
    # Token labels on both axes of the drawn heatmap.
    axes = browser.evaluate("var d = document.getElementById('attention-plot').data[0]; [d.x, d.y]")
    assert axes[0][:3] == ["The", "cat", "sat"] and axes[1][1] == "cat"
    browser.evaluate("1")  # collect the events that arrived so far
    assert browser.problems() == []
    # Plotly paints heatmaps through data: images; nothing else is fetched.
    fetched = [u for u in browser.requests() if u != ctx["url"] and not u.startswith("data:")]
    assert fetched == []


def test_the_overview_draws_every_head_with_its_label(session) -> None:
    browser, ctx = session
    count = browser.evaluate("document.getElementById('overview').dataset.thumbnails")
    assert int(count) == 2 * HEADS
    thumbs = browser.evaluate(
        """Array.from(document.querySelectorAll('#overview figure')).map(function (f) {
          var c = f.querySelector('canvas'), px = c.getContext('2d')
            .getImageData(0, 0, c.width, c.height).data, seen = {};
          for (var i = 0; i < px.length; i += 4) {
            seen[px[i] + ',' + px[i + 1] + ',' + px[i + 2]] = 1;
          }
          return [f.dataset.layer, f.dataset.head, Object.keys(seen).length, c.width,
                  f.querySelector('figcaption').textContent];
        })"""
    )
    assert [(t[0], t[1]) for t in thumbs] == [(str(k), str(h)) for k in range(2) for h in range(3)]
    patterns = ctx["analysis"]["layers"]["encoder_1"]["pattern_per_head"]
    for layer, head, colours, width, caption in thumbs:
        assert colours >= 2 and width == SEQ, (layer, head)  # drawn, not blank
        if layer == "1":
            assert caption == f"head {head} · {patterns[int(head)]}"


def test_clicking_a_thumbnail_opens_that_head_and_its_metrics(session) -> None:
    browser, ctx = session
    browser.evaluate(
        'document.querySelector(\'#overview figure[data-layer="1"][data-head="2"]\').click()'
    )
    browser.wait_for("document.getElementById('view-status').dataset.title.endsWith('head 2')")
    status = _status(browser)
    assert status["title"] == "item 0 — encoder_1 — head 2"
    head = ctx["layers"]["encoder_1"][0, 2].astype(np.float64)
    assert float(status["sum"]) == pytest.approx(_f16(head).sum(), rel=1e-9)
    assert status["masked"] == "0"
    panel = browser.evaluate("document.getElementById('head-panel').innerText")
    metrics = ctx["analysis"]["layers"]["encoder_1"]
    assert "encoder_1: head 2" in panel and metrics["pattern_per_head"][2] in panel
    assert f"{metrics['attention_entropy'][2]:.4f}" in panel
    current = "document.querySelector('#overview figure.current').dataset.head"
    assert browser.evaluate(current) == "2"


def test_the_query_view_follows_the_chosen_token(session) -> None:
    browser, ctx = session
    browser.evaluate(
        "var s = document.getElementById('query-select'); s.value = '5';"
        "s.dispatchEvent(new Event('change'))"
    )
    browser.wait_for("document.getElementById('query-status').dataset.query === '5'")
    status = _status(browser, "query-status")
    # The previous-token head: "mat" (5) attends to "the" (4).
    assert status["label"] == "mat" and status["argmax"] == "4"
    bars = browser.evaluate("document.getElementById('query-plot').data[0].y")
    np.testing.assert_allclose(bars, _f16(ctx["layers"]["encoder_1"][0, 2, 5]), atol=1e-12)


def test_switching_views_draws_the_rollout_and_another_item(session) -> None:
    browser, ctx = session
    browser.evaluate(
        "var s = document.getElementById('view-select'); s.value = String(s.options.length - 1);"
        "s.dispatchEvent(new Event('change'))"
    )
    browser.wait_for("document.getElementById('view-status').dataset.title.includes('rollout')")
    status = _status(browser)
    rollout = np.asarray(ctx["analysis"]["rollout"], dtype=np.float64)
    rollout = rollout[0] if rollout.ndim == 3 else rollout
    assert float(status["sum"]) == pytest.approx(_f16(rollout).sum(), rel=1e-9)
    browser.evaluate(
        "var s = document.getElementById('item-select'); s.value = '1';"
        "s.dispatchEvent(new Event('change'));"
        "var v = document.getElementById('view-select'); v.value = '1';"
        "v.dispatchEvent(new Event('change'))"
    )
    browser.wait_for(
        "document.getElementById('view-status').dataset.title === 'item 1 — encoder_1 — head 0'"
    )
    status = _status(browser)
    head = ctx["layers"]["encoder_1"][1, 0].astype(np.float64)
    assert float(status["sum"]) == pytest.approx(_f16(head).sum(), rel=1e-9)
    browser.evaluate("1")
    assert browser.problems() == []


def test_a_url_fragment_opens_a_view(session) -> None:
    browser, ctx = session
    browser.open(ctx["url"] + "#layer=1&view=3&query=7&item=1")
    browser.call("Page.reload")
    browser.wait_for("document.readyState === 'complete'")
    browser.wait_for("document.getElementById('query-status').dataset.drawn === '1'")
    assert _status(browser)["title"] == "item 1 — encoder_1 — head 2"
    assert _status(browser, "query-status")["query"] == "7"
