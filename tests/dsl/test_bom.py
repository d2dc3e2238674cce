"""A UTF-8 byte-order mark at the start of a .neural file is not part of the program."""

from __future__ import annotations

import pytest

from neural_attn.dsl import compile_file, compile_source
from neural_attn.errors import DSLError

TEXT = "network N {\n  input: (None, 8)\n  layers:\n    Dense(4)\n}\n"


def test_a_file_written_with_a_bom_compiles_and_keeps_its_positions(tmp_path):
    path = tmp_path / "bom.neural"
    path.write_text(TEXT, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    pos = compile_file(path).layers[0].pos
    assert (pos.line, pos.column) == (4, 5)


def test_errors_after_a_bom_point_at_the_right_column():
    with pytest.raises(DSLError) as info:
        compile_source("\ufeff" + TEXT.replace("Dense(4)", "Dense(-4)"))
    assert "<string>:4:" in str(info.value)
