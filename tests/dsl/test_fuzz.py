"""Whatever text arrives, compile_source raises only DSLError subclasses."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neural_attn.dsl import compile_source
from neural_attn.errors import DSLError

CORPUS = sorted((Path(__file__).parent.parent / "data" / "corpus").glob("*.neural"))
TEXTS = [p.read_text() for p in CORPUS]
# Characters that matter to the grammar, so random edits often reach deep parser states.
ALPHABET = "(){}[],:;=*@#\"'-.0123456789eE \n\tabcxyzNoneTrueHPO_"


def check(source: str) -> None:
    try:
        compile_source(source)
    except DSLError as err:
        str(err)  # rendering the message never fails either


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["delete", "insert", "swap", "duplicate"]))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)) :]
        elif op == "insert":
            text = text[:i] + draw(st.text(ALPHABET, min_size=1, max_size=4)) + text[i:]
        elif op == "swap":
            j = draw(st.integers(0, len(text) - 1))
            a, b = sorted((i, j))
            if a != b:
                text = text[:a] + text[b] + text[a + 1 : b] + text[a] + text[b + 1 :]
        else:
            j = min(len(text), i + draw(st.integers(1, 40)))
            text = text[:j] + text[i:j] + text[j:]
    return text


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.text(max_size=200))
def test_random_text(source):
    check(source)


@FUZZ
@given(st.text(ALPHABET, max_size=300))
def test_random_grammar_characters(source):
    check("network N { input: (8, 16) layers: " + source)


@FUZZ
@given(mutated())
def test_mutated_corpus_files(source):
    check(source)
