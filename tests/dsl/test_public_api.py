"""The public surface of neural_attn.dsl is what other code depends on, no more, no less."""

from __future__ import annotations

import inspect

import neural_attn.dsl as dsl


def test_all():
    for name in ("parse", "compile_source", "compile_file", "network_to_dict", "LAYER_SPECS"):
        assert name in dsl.__all__
    for name in dsl.__all__:
        assert hasattr(dsl, name)


def test_signatures():
    params = inspect.signature(dsl.compile_source).parameters
    assert [(p.name, p.kind.name) for p in params.values()] == [
        ("source", "POSITIONAL_OR_KEYWORD"),
        ("filename", "KEYWORD_ONLY"),
        ("network", "KEYWORD_ONLY"),
        ("max_layers", "KEYWORD_ONLY"),
    ]
    assert params["filename"].default == "<string>" and params["network"].default is None
    assert list(inspect.signature(dsl.parse).parameters) == ["source", "filename"]
    assert list(inspect.signature(dsl.compile_file).parameters) == ["path", "network"]


def test_compile_file_reports_unreadable_files(tmp_path):
    import pytest

    from neural_attn.errors import DSLError

    with pytest.raises(DSLError) as info:
        dsl.compile_file(tmp_path / "missing.neural")
    assert "cannot read this file" in str(info.value)
    bad = tmp_path / "bad.neural"
    bad.write_bytes(b"network \xff")
    with pytest.raises(DSLError) as info:
        dsl.compile_file(bad)
    assert "not UTF-8" in str(info.value)
