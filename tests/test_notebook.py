"""The example notebook runs top to bottom and shows attention inline (nbclient + ipykernel)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

NOTEBOOK = (
    Path(__file__).resolve().parents[1]
    / "examples"
    / "attention_examples"
    / ("attention_notebook.ipynb")
)


@pytest.mark.slow
def test_the_example_notebook_runs_and_displays_inline() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from PIL import Image

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    results = [out for out in outputs if out.output_type == "execute_result"]
    pages = [out.data["text/html"] for out in results if "text/html" in out.data]
    # The result is the page, in an iframe: its data, its script, no network.
    (page,) = pages
    assert page.startswith("<iframe srcdoc=") and "attention-data" in page
    assert "multi_head_attention_0" in page and "overview" in page
    pngs = [out.data["image/png"] for out in results if "image/png" in out.data]
    assert len(pngs) >= 2  # the result's heatmap and the head grid
    with Image.open(io.BytesIO(base64.b64decode(pngs[-1]))) as image:
        assert image.size[0] > 300
    printed = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "'the', 'cat', 'sat'" in printed and "local" in printed
