"""Every layer type the DSL knows has one entry in each backend's catalogue and in the neutral
description (backends/neutral.py): adding a type is one entry per table, and this fails while
one is missing. The catalogues import no framework, so this runs anywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from neural_attn.backends.neutral import NEUTRAL
from neural_attn.backends.pytorch.catalogue import CATALOGUE as PYTORCH
from neural_attn.backends.tensorflow.catalogue import CATALOGUE as TENSORFLOW
from neural_attn.dsl.layers import LAYER_SPECS

TABLES = {"backends.neutral.NEUTRAL": NEUTRAL, "tensorflow": TENSORFLOW, "pytorch": PYTORCH}


@pytest.mark.parametrize("table", TABLES)
def test_every_layer_type_has_an_entry(table):
    missing = sorted(set(LAYER_SPECS) - set(TABLES[table]))
    assert not missing, f"{table} has no entry for {', '.join(missing)}"


@pytest.mark.parametrize("table", TABLES)
def test_no_entry_for_a_type_the_dsl_does_not_know(table):
    assert sorted(set(TABLES[table]) - set(LAYER_SPECS)) == []


def test_neutral_arguments_are_parameters_of_the_type():
    for kind, neutral in NEUTRAL.items():
        names = set(LAYER_SPECS[kind].names) | (
            {"shortcut"} if kind == "ResidualConnection" else set()
        )
        assert set(neutral.args) <= names, kind


def test_renamed_arguments_are_neutral_arguments():
    for kind, entry in PYTORCH.items():
        assert set(entry.rename) <= set(NEUTRAL[kind].args), kind


def test_a_missing_entry_is_what_the_test_reports(monkeypatch):
    monkeypatch.delitem(PYTORCH, "GRU")
    with pytest.raises(AssertionError, match="pytorch has no entry for GRU"):
        test_every_layer_type_has_an_entry("pytorch")


def test_the_catalogues_load_no_framework():
    code = (
        "import sys, neural_attn.backends.tensorflow.catalogue, "
        "neural_attn.backends.pytorch.catalogue, neural_attn.backends.weight_files;"
        "print(','.join(m for m in ('torch', 'tensorflow', 'keras', 'h5py') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
