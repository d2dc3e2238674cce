"""Turn a lark parse failure into a ``DSLSyntaxError`` a person can act on.

The LALR value stack at the failure holds every token not yet reduced into a rule; an opening
bracket still on it is an unclosed one. From the innermost unclosed bracket, the token that
broke the parse and the set of tokens the parser would have taken, we pick a phrase:
"missing `)` after the arguments of `Dense`", "unknown section `lyers:`", ...
"""

from __future__ import annotations

import difflib
from typing import Any

from lark import Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from neural_attn.errors import DSLSyntaxError, excerpt

__all__ = ["error_from_lark", "source_line"]

SECTIONS = ("input", "layers", "loss", "optimizer", "metrics", "train", "execution", "execute")
_SECTION_TERMS = {s.upper() for s in SECTIONS}
_OPEN = {"LPAR": "(", "LSQB": "[", "LBRACE": "{"}
_CLOSE = {"RPAR": "LPAR", "RSQB": "LSQB", "RBRACE": "LBRACE"}
_CLOSER_OF = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_KEYWORD_VALUES = {"TRUE_LOWER", "TRUE_TITLE", "TRUE_UPPER", "FALSE_LOWER", "FALSE_TITLE"}
_KEYWORD_VALUES |= {"FALSE_UPPER", "NONE_LOWER", "NONE_TITLE", "NONE_UPPER"}
_VALUE_START = {"STRING", "INT", "FLOAT", "MINUS", "NAME", "LPAR", "LSQB"} | _KEYWORD_VALUES
# Expected tokens in the order we list them, with the words we use for them.
_WORDS = {
    "COMMA": "`,`",
    "RPAR": "`)`",
    "RSQB": "`]`",
    "RBRACE": "`}`",
    "COLON": "`:`",
    "EQUAL": "`=`",
    "LPAR": "`(`",
    "LBRACE": "`{`",
    "STAR": "`*`",
    "AT": "`@`",
    "SEMICOLON": "`;`",
    "NETWORK": "`network`",
    "DEFINE": "`define`",
    "NAME": "a name",
    "INT": "a whole number",
    "FLOAT": "a number",
    "STRING": "a string",
    "$END": "the end of the file",
}


def source_line(source: str, line: int) -> str:
    """The text of 1-based ``line`` (lark counts only ``\\n`` as a line break, so do we)."""
    lines = source.split("\n")
    return lines[line - 1].rstrip("\r") if 1 <= line <= len(lines) else ""


def error_from_lark(exc: UnexpectedInput, source: str, filename: str) -> DSLSyntaxError:
    """Map lark's exception to our error, with position, the offending line and a hint."""

    def make(message: str, line: int, column: int, hint: str | None = None) -> DSLSyntaxError:
        return DSLSyntaxError(
            message,
            filename=filename,
            line=line,
            column=column,
            source_line=source_line(source, line),
            hint=hint,
        )

    if isinstance(exc, UnexpectedToken) and exc.state is not None:
        message, (line, column), hint = _token_error(exc)
        return make(message, line, column, hint)
    if isinstance(exc, UnexpectedCharacters):
        at = exc.pos_in_stream or 0
        char = source[at] if at < len(source) else ""
        if char in "\"'":
            return make(
                f"unterminated string: the closing `{char}` is missing",
                exc.line,
                exc.column,
                hint="a string must end on the line where it starts",
            )
        shown = char if char.isprintable() and not char.isspace() else repr(char)
        hint = None
        if char in "\u2018\u2019\u201c\u201d":
            hint = "use straight quotes (\" or ') around strings"
        return make(f"unexpected character `{shown}`", exc.line, exc.column, hint)
    where: Any = (getattr(exc, "line", None), getattr(exc, "column", None))
    if not all(isinstance(n, int) for n in where):
        return DSLSyntaxError("the file ends too early", filename=filename)
    return make("unexpected text", where[0], where[1])


# ---------------------------------------------------------------------------------- tokens


def _token_error(exc: UnexpectedToken) -> tuple[str, tuple[int, int], str | None]:
    state: Any = exc.state
    stack: list[Any] = list(state.value_stack)
    try:
        # What the parser really takes here: LALR tables merge look-aheads across contexts.
        expected = set(exc.accepts or ()) or set(exc.expected or ())
    except LarkError:  # pragma: no cover - accepts() only feeds tokens to a copy
        expected = set(exc.expected or ())
    tok: Any = exc.token
    kind = tok.type
    opens = _unclosed(stack)
    inner = opens[-1] if opens else None
    owner = _owner(stack, inner) if inner is not None else None
    prev_end = _end_of_last(stack) or (1, 1)
    here = (tok.line, tok.column) if isinstance(tok.line, int) and kind != "$END" else prev_end
    last = stack[-1] if stack else None
    last_kind = last.type if isinstance(last, Token) else None
    found = _describe(tok)
    in_layers = _in_layer_list(stack, inner)

    if inner is not None:
        open_tok = stack[inner]
        ch = _OPEN[open_tok.type]
        closer = _CLOSER_OF[open_tok.type]
        opened = f"`{ch}` opened on line {open_tok.line}, column {open_tok.column} is never closed"
        missing = "missing `}` to close" if ch == "{" else f"missing `{_WORDS[closer][1]}` after"
        if ch == "(" and owner and not owner.startswith("the arguments"):
            missing = "missing `)` to close"
        if kind == "$END":
            if closer in expected:
                return f"{missing} {owner}", prev_end, opened
            return f"the file ends inside {owner}", prev_end, f"expected {_expected(expected)}"
        if ch in "([":
            new_line = here[0] > prev_end[0]
            late = new_line or kind == "RBRACE" or kind in _SECTION_TERMS
            if closer in expected and late:
                return f"{missing} {owner}", prev_end, opened
            if kind == "COLON" and last_kind == "NAME":
                return (
                    f"named arguments are written `{last}=...`, not `{last}: ...`",
                    here,
                    None,
                )
            if last_kind == "EQUAL" and closer not in expected:
                name = stack[-2] if len(stack) > 1 else "?"
                return f"missing a value after `{name}=` in {owner}", here, None
            if kind in _CLOSE and _CLOSE[kind] != open_tok.type:
                return f"unexpected {found}: {owner} is still open", here, opened
            hint = "separate arguments with commas" if "COMMA" in expected else None
            return f"expected {_expected(expected)} in {owner}, found {found}", here, hint

    empty = _empty_layers(stack, kind)
    if empty is not None:
        return "`layers:` lists no layers", empty, "write at least one layer, e.g. `Dense(10)`"
    if kind in _SECTION_TERMS and owner and not owner.startswith("the `network"):
        return f"missing `}}` to close {owner} before `{tok}`", prev_end, None
    if kind in _CLOSE and (inner is None or _CLOSE[kind] != stack[inner].type):
        return f"unmatched {found}: no `{_OPEN[_CLOSE[kind]]}` is open here", here, None
    if last_kind in _SECTION_TERMS and "COLON" in expected:
        return f"missing `:` after `{last}`", prev_end, None
    if last_kind in _SECTION_TERMS and "LBRACE" in expected:
        return f"missing `{{` after `{last}`", prev_end, None
    before = stack[-2] if len(stack) > 1 else None
    if last_kind == "NAME" and isinstance(before, Token) and before.type in ("NETWORK", "DEFINE"):
        return f"missing `{{` after `{before} {last}`", prev_end, None
    if last_kind in ("NETWORK", "DEFINE"):
        return f"expected a name after `{last}`, found {found}", here, None
    if last_kind == "STAR":
        return f"`*` must be followed by a number of repetitions, found {found}", here, None
    if last_kind == "AT":
        return (
            f'`@` must be followed by a device string such as "cuda:0", found {found}',
            here,
            None,
        )
    if kind == "COLON" and last_kind == "NAME" and owner:
        if owner.startswith("the `network"):
            return _unknown_section(str(last), _start(last))
        return f"`{last}: ...` has no meaning inside {owner}", _start(last), None
    if kind == "LBRACE" and last_kind == "NAME" and owner and owner.endswith("block"):
        hint = f"if `{last}` starts a new section, close {owner} with `}}` first"
        return f"expected `:` after `{last}` in {owner}, found `{{`", here, hint
    if inner is None:
        if kind == "NAME" and str(tok).lower() in ("network", "define"):
            return f"`{tok}` must be written in lower case: `{str(tok).lower()}`", here, None
        message = f"expected `network` or `define` at the top level, found {found}"
        close = difflib.get_close_matches(str(tok), ("network", "define"), n=1, cutoff=0.6)
        if kind == "NAME" and close:
            message += f"; did you mean `{close[0]}`?"
        return message, here, None
    if in_layers and "NAME" in expected and kind not in _CLOSE:
        return f"expected a layer in {owner}, found {found}", here, None
    if kind == "NAME" and owner and owner.startswith("the `network"):
        return _unknown_section(str(tok), here)
    return f"expected {_expected(expected, in_layers)} in {owner}, found {found}", here, None


def _unknown_section(word: str, at: tuple[int, int]) -> tuple[str, tuple[int, int], str | None]:
    close = difflib.get_close_matches(word.lower(), SECTIONS, n=1, cutoff=0.6)
    message = f"unknown section `{word}`"
    if close:
        message += f"; did you mean `{close[0]}`?"
    hint = (
        "a network has the sections input:, layers:, loss:, optimizer:, metrics:, "
        "train { ... } and execution { ... }"
    )
    return message, at, hint


# ---------------------------------------------------------------------------------- helpers


def _is_tok(item: Any, kind: str) -> bool:
    return isinstance(item, Token) and item.type == kind


def _unclosed(stack: list[Any]) -> list[int]:
    """Indexes of the opening brackets on the stack that no closing bracket matches."""
    opens: list[int] = []
    for i, item in enumerate(stack):
        if isinstance(item, Token):
            if item.type in _OPEN:
                opens.append(i)
            elif item.type in _CLOSE and opens and stack[opens[-1]].type == _CLOSE[item.type]:
                opens.pop()
    return opens


def _owner(stack: list[Any], i: int) -> str:
    """Words for what the bracket at ``stack[i]`` opens."""
    tok = stack[i]
    prev = stack[i - 1] if i > 0 else None
    prev2 = stack[i - 2] if i > 1 else None
    if tok.type == "LSQB":
        return f"the list opened on line {tok.line}"
    if tok.type == "LPAR":
        if _is_tok(prev, "NAME"):
            return f"the arguments of `{prev}`"
        return f"the tuple opened on line {tok.line}"
    if _is_tok(prev, "NAME") and _is_tok(prev2, "NETWORK"):
        return f"the `network {prev}` block"
    if _is_tok(prev, "NAME") and _is_tok(prev2, "DEFINE"):
        return f"the `define {prev}` block"
    if isinstance(prev, Token) and prev.type in ("TRAIN", "EXECUTION", "EXECUTE"):
        return f"the `{prev}` block"
    for item in reversed(stack[:i]):
        if isinstance(item, Token):
            return f"the body of `{item}`" if item.type == "NAME" else "this block"
    return "this block"


def _in_layer_list(stack: list[Any], inner: int | None) -> bool:
    """True when the parser sits in a list of layers (after `layers:` or in a `{ }` body)."""
    if inner is None or stack[inner].type != "LBRACE":
        return False
    owner = _owner(stack, inner)
    if owner.startswith("the body") or owner.startswith("the `define"):
        return True
    return any(_is_tok(item, "LAYERS") for item in stack[inner:])


def _empty_layers(stack: list[Any], kind: str) -> tuple[int, int] | None:
    """Where `layers:` is, when it is directly followed by a section (read as a layer name)."""
    for i, item in enumerate(stack):
        if _is_tok(item, "LAYERS") and i + 1 < len(stack) and _is_tok(stack[i + 1], "COLON"):
            nxt = stack[i + 2] if i + 2 < len(stack) else None
            ends = kind in _SECTION_TERMS or kind in ("RBRACE", "$END")
            if (nxt is None and ends) or (_is_tok(nxt, "NAME") and str(nxt) in SECTIONS):
                return _start(item)
    return None


def _start(item: Any) -> tuple[int, int]:
    return (item.line, item.column)


def _end_of_last(stack: list[Any]) -> tuple[int, int] | None:
    """Where the last consumed token ends: the place to put a missing `)` or `}`."""
    for item in reversed(stack):
        if isinstance(item, Token) and isinstance(item.end_line, int):
            return (item.end_line, item.end_column or 1)
        if isinstance(item, Tree):
            # The parser keeps every token (parser.py), so a subtree's last token is its end.
            last = _last_token(item)
            if last is not None and isinstance(last.end_line, int):
                return (last.end_line, last.end_column or 1)
    return None


def _last_token(tree: Tree[Token]) -> Token | None:
    node: Any = tree
    while isinstance(node, Tree):
        if not node.children:
            return None
        node = node.children[-1]
    return node if isinstance(node, Token) else None


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    text = excerpt(str(tok), 40)  # a token may be as long as the file
    if tok.type == "STRING":
        return f"the string {text}"
    if tok.type in ("INT", "FLOAT"):
        return f"the number {text}"
    return f"`{text}`"


def _expected(expected: set[str], in_layers: bool = False) -> str:
    left = set(expected)
    words: list[str] = []
    if len(left & _VALUE_START) >= 4:
        words.append("a value")
        left -= _VALUE_START
    if left & _SECTION_TERMS:
        words.append("a section (`input:`, `layers:`, `loss:`, `train {`, ...)")
        left -= _SECTION_TERMS
    for term, word in _WORDS.items():
        if term in left:
            words.append("a layer" if term == "NAME" and in_layers else word)
    words = list(dict.fromkeys(words))[:6] or ["something else"]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
