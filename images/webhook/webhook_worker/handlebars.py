"""A declared subset of Handlebars (a superset of the Mustache our templates used): variables, sections, and the
block helpers `if`/`else`, `unless`, `each` (with `this`, `@index`, `@key`, `@first`, `@last`), `with`, and the
`lookup` helper. Anything else (partials, other helpers, block parameters, delimiter changes) is refused when the
template is compiled, naming it, so a template that compiles always renders. docs/webhook.md says why this is
ours and not a library's."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BLOCK_HELPERS = ("if", "unless", "each", "with")
INLINE_HELPERS = ("lookup",)

PATH_SEGMENT = re.compile(r"\[[^\]]*\]|[^.\[\]/\s]+")
ARGUMENT = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|\S+')
NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
MAX_DEPTH = 50  # blocks inside blocks: rendering recurses, and no real template nests so deep
STANDALONE = {"open", "inverted", "close", "else", "comment"}


class HandlebarsError(ValueError):
    """A template uses something the subset does not have, or its blocks do not match; the text says where."""


@dataclass
class Path:
    """A variable reference: `a.b.0`, `this`, `../x`, `@index`, `@root.a`."""

    parents: int  # how many `../` lead it
    segments: tuple[str, ...]
    data: bool = False  # `@index`, `@key`, `@root` ...
    this: bool = False  # starts at the current context, never searched in outer ones

    @classmethod
    def parse(cls, text: str, where: str) -> Path:
        source = text
        parents = 0
        while text.startswith("../"):
            parents, text = parents + 1, text[3:]
        data = text.startswith("@")
        text = text.removeprefix("@")
        if data and text.startswith("../"):
            raise HandlebarsError(f"{where}: {source!r}: data of an outer loop (@../) is not supported")
        this = text in ("this", ".") or text.startswith(("this.", "this/", "./"))
        if this:
            text = "" if text in ("this", ".") else text[2:] if text.startswith("./") else text[5:]
        segments = tuple(part.strip("[]") for part in PATH_SEGMENT.findall(text.replace("/", ".")))
        if not segments and not this:
            raise HandlebarsError(f"{where}: {source!r} is not a variable")
        return cls(parents, segments, data, this)


@dataclass
class Literal:
    """A string, number, true, false or null given as a helper argument."""

    value: Any


Argument = Path | Literal


@dataclass
class Text:
    text: str


@dataclass
class Variable:
    expression: list[Argument]  # [path] or [helper name as Literal, arguments...]
    escaped: bool


@dataclass
class Block:
    """`{{#name args}}...{{else}}...{{/name}}`; name is a block helper or, for a Mustache section, a path."""

    helper: str  # if, unless, each, with, or "section" / "inverted"
    argument: Argument
    body: list[Any] = field(default_factory=list)
    inverse: list[Any] = field(default_factory=list)


@dataclass
class Frame:
    """One level of the context stack: the value `this` is, and the data variables (`@index` ...) of a loop."""

    value: Any
    data: dict[str, Any]


def is_empty(value: Any) -> bool:
    """Handlebars' emptiness, for `with` and `each`: null, false, "" and empty lists; 0 is not empty."""
    if value is None or value is False or value == "" or (isinstance(value, list | tuple) and not value):
        return True
    return isinstance(value, float) and value != value  # NaN


def is_false(value: Any) -> bool:
    """JavaScript's falsiness with empty lists, for `if`, `unless` and Mustache sections: 0 is false too."""
    return is_empty(value) or (isinstance(value, int | float) and not isinstance(value, bool) and value == 0)


class Compiled:
    """A parsed template: render(context) with an escape function and a value printer."""

    def __init__(self, source: str) -> None:
        self.nodes = _parse(_tokens(source))

    def render(self, context: Any, escape: Callable[[str], str], text: Callable[[Any], str]) -> str:
        """The rendered text; missing variables render empty."""
        out: list[str] = []
        _render(self.nodes, [Frame(context, {})], out, escape, text)
        return "".join(out)


# Where each kind of tag ends: `{{!-- --}}` may hold `}}`, `{{{x}}}` ends with three braces; `~` strips whitespace.
TAG_ENDS = {
    "long comment": re.compile(r"--~?\}\}"),
    "triple": re.compile(r"\}~?\}\}"),
    "tag": re.compile(r"~?\}\}"),
}


def _scan(source: str) -> list[Any]:
    """Text and tags alternately, a tag as (strip before, content, strip after, offset); one pass, so a long
    template with unclosed comments costs no more than its length."""
    tokens: list[Any] = []
    position = 0
    while (start := source.find("{{", position)) >= 0:
        tokens.append(source[position:start])
        inner = start + 2
        strip_before = source.startswith("~", inner)
        inner += strip_before
        kind = (
            "long comment" if source.startswith("!--", inner) else "triple" if source.startswith("{", inner) else "tag"
        )
        end = TAG_ENDS[kind].search(source, inner)
        if end is None:
            raise HandlebarsError(f"a tag opened at character {start} ({source[start : start + 20]!r}) is not closed")
        content = source[inner : end.start() + (kind == "triple")]
        if kind == "tag" and not content.startswith("!") and ("{" in content or "}" in content):
            raise HandlebarsError(f"a tag opened at character {start} ({source[start : start + 20]!r}) is not closed")
        tokens.append((strip_before, content, "~" in end.group(), start))
        position = end.end()
    tokens.append(source[position:])
    return tokens


def _tokens(source: str) -> list[Any]:
    """Text and tags, with standalone lines and `~` whitespace control applied as Handlebars applies them: which
    tags stand alone on their line is decided on the template as written, then their lines are removed."""
    tokens = _scan(source)
    last = len(tokens) - 2
    alone = {
        index
        for index in range(1, len(tokens), 2)
        if _kind(tokens[index][1]) in STANDALONE
        and _alone(tokens[index - 1], tokens[index + 1], index == 1, index == last)
    }
    for index in alone:  # the line break after the tag, then the indentation before it
        tokens[index + 1] = re.sub(r"^[ \t]*\r?\n?", "", tokens[index + 1], count=1)
    for index in alone:
        tokens[index - 1] = re.sub(r"[ \t]*$", "", tokens[index - 1], count=1)
    for index in range(1, len(tokens), 2):
        strip_before, _, strip_after, _ = tokens[index]
        if strip_before:
            tokens[index - 1] = tokens[index - 1].rstrip()
        if strip_after:
            tokens[index + 1] = tokens[index + 1].lstrip()
    return tokens


def _alone(before: str, after: str, first: bool, last: bool) -> bool:
    """A tag with only blanks around it on its line (the template's first or last line counts)."""
    line_start = before.rfind("\n") + 1
    if before[line_start:].strip(" \t") or (line_start == 0 and not first):
        return False
    return re.match(r"[ \t]*(\r?\n|$)", after) is not None and ("\n" in after or last)


def _kind(content: str) -> str:
    content = content.strip()
    if content.startswith("!"):
        return "comment"
    if content.startswith("#"):
        return "open"
    if content.startswith("^"):
        return "else" if content == "^" else "inverted"
    if content.startswith("/"):
        return "close"
    if content == "else" or content.startswith("else "):
        return "else"
    return "variable"


def _arguments(text: str, where: str) -> list[Argument]:
    found: list[Argument] = []
    for word in ARGUMENT.findall(text):
        if word[0] in "\"'":
            found.append(Literal(word[1:-1].replace("\\" + word[0], word[0])))
        elif NUMBER.match(word):
            found.append(Literal(float(word) if "." in word else int(word)))
        elif word in ("true", "false", "null", "undefined"):
            found.append(Literal({"true": True, "false": False}.get(word)))
        elif "=" in word:
            raise HandlebarsError(f"{where}: hash arguments ({word!r}) are not supported")
        elif word.startswith("(") or word.startswith("|") or word == "as":
            raise HandlebarsError(f"{where}: subexpressions and block parameters ({word!r}) are not supported")
        else:
            found.append(Path.parse(word, where))
    return found


def _parse(tokens: list[Any]) -> list[Any]:
    root: list[Any] = []
    # Open blocks: (block, its name, where it opened, the list now being filled).
    stack: list[tuple[Block | None, str, int, list[Any]]] = [(None, "", 0, root)]
    for index, token in enumerate(tokens):
        target = stack[-1][3]
        if index % 2 == 0:
            if token:
                target.append(Text(token))
            continue
        _, content, _, offset = token
        kind, content = _kind(content), content.strip()
        at = f"{{{{{content}}}}} at character {offset}"
        if kind == "comment":
            continue
        if kind == "variable":
            target.append(_variable(content, at))
        elif kind in ("open", "inverted"):
            if len(stack) > MAX_DEPTH:
                raise HandlebarsError(f"{at}: blocks nest deeper than {MAX_DEPTH}")
            opening, name = _block(content[1:].strip(), kind, at)
            target.append(opening)
            stack.append((opening, name, offset, opening.body))
        elif kind == "else":
            block, name, opened, _ = stack[-1]
            if block is None:
                raise HandlebarsError(f"{at}: {{{{else}}}} outside any block")
            chained = content.removeprefix("else").strip() if content != "^" else ""
            if chained:  # `{{else if x}}`: a block inside the else branch, closed by the same `{{/if}}`
                inner, _ = _block(chained, "open", at)
                block.inverse.append(inner)
                stack[-1] = (inner, name, opened, inner.body)
            else:
                stack[-1] = (block, name, opened, block.inverse)
        else:
            name = content[1:].strip()
            block, opened_name, opened, _ = stack[-1]
            if block is None:
                raise HandlebarsError(f"{at}: closes a block that was never opened")
            if name != opened_name:
                raise HandlebarsError(f"{at}: closes {{{{#{opened_name}}}}} opened at character {opened}")
            stack.pop()
    if len(stack) > 1:
        _, name, opened, _ = stack[-1]
        raise HandlebarsError(f"{{{{#{name}}}}} opened at character {opened} is never closed")
    return root


def _variable(content: str, at: str) -> Variable:
    escaped = not (content.startswith("{") or content.startswith("&"))
    content = content.strip("{}").lstrip("&").strip()
    if content.startswith(">"):
        raise HandlebarsError(f"{at}: partials are not supported")
    if content.startswith("="):
        raise HandlebarsError(f"{at}: changing delimiters is not supported")
    words = _arguments(content, at)
    if not words:
        raise HandlebarsError(f"{at}: an empty tag")
    if len(words) > 1:
        head = words[0]
        name = ".".join(head.segments) if isinstance(head, Path) else str(head.value)
        if name not in INLINE_HELPERS:
            raise HandlebarsError(
                f"{at}: unknown helper {name!r} (supported: {', '.join(INLINE_HELPERS + BLOCK_HELPERS)})"
            )
        if len(words) != 3:
            raise HandlebarsError(f"{at}: lookup takes an object and a key")
        return Variable([Literal(name), *words[1:]], escaped)
    if isinstance(words[0], Literal):
        raise HandlebarsError(f"{at}: a literal is not a variable")
    return Variable(words, escaped)


def _block(content: str, kind: str, at: str) -> tuple[Block, str]:
    words = content.split(None, 1)
    if not words:
        raise HandlebarsError(f"{at}: a block needs a name")
    name = words[0]
    if kind == "inverted":
        return Block("inverted", Path.parse(content, at)), content
    if name in BLOCK_HELPERS:
        arguments = _arguments(words[1] if len(words) > 1 else "", at)
        if len(arguments) != 1:
            raise HandlebarsError(f"{at}: #{name} takes one argument")
        return Block(name, arguments[0]), name
    if len(words) > 1:
        raise HandlebarsError(
            f"{at}: unknown block helper {name!r} (supported: {', '.join(BLOCK_HELPERS)}, or a section #variable)"
        )
    return Block("section", Path.parse(name, at)), name


_MISSING = object()


def _step(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return value.get(key, _MISSING)
    if isinstance(value, str) and key == "length":
        return len(value)
    if isinstance(value, list | tuple):
        if key == "length":
            return len(value)
        if key.isdigit() and int(key) < len(value):
            return value[int(key)]
    return _MISSING


def _resolve(argument: Argument, frames: list[Frame]) -> Any:
    if isinstance(argument, Literal):
        return argument.value
    depth = len(frames) - 1 - argument.parents
    if depth < 0:
        return None
    segments = argument.segments
    if argument.data:
        name, segments = segments[0], segments[1:]
        if name == "root":
            value = frames[0].value
        else:
            value = next((f.data[name] for f in reversed(frames[: depth + 1]) if name in f.data), None)
    elif argument.this or not segments:
        value = frames[depth].value
    else:
        # Mustache looks a name up in outer contexts too (Handlebars' compat mode): templates of both work.
        value = next(
            (found for f in reversed(frames[: depth + 1]) if (found := _step(f.value, segments[0])) is not _MISSING),
            None,
        )
        segments = segments[1:]
    for key in segments:
        if value is None:
            return None
        value = _step(value, key)
        if value is _MISSING:
            return None
    return value


def _render(
    nodes: list[Any], frames: list[Frame], out: list[str], escape: Callable[[str], str], text: Callable[[Any], str]
) -> None:
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Variable):
            if len(node.expression) == 1:
                value = _resolve(node.expression[0], frames)
            else:  # lookup
                container = _resolve(node.expression[1], frames)
                key = _resolve(node.expression[2], frames)
                value = None if container is None or key is None else _step(container, text(key))
                value = None if value is _MISSING else value
            printed = text(value)
            out.append(escape(printed) if node.escaped else printed)
        else:
            _render_block(node, frames, out, escape, text)


def _render_block(
    block: Block, frames: list[Frame], out: list[str], escape: Callable[[str], str], text: Callable[[Any], str]
) -> None:
    value = _resolve(block.argument, frames)
    helper = block.helper
    if helper == "section":  # Mustache: a list repeats, true keeps the context, an object becomes it
        if is_false(value):
            _render(block.inverse, frames, out, escape, text)
        elif isinstance(value, list | tuple):
            _each(block, value, frames, out, escape, text)
        elif value is True:
            _render(block.body, frames, out, escape, text)
        else:
            _render(block.body, [*frames, Frame(value, {})], out, escape, text)
    elif helper == "inverted":
        _render(block.body if is_false(value) else block.inverse, frames, out, escape, text)
    elif helper in ("if", "unless"):
        chosen = block.body if is_false(value) == (helper == "unless") else block.inverse
        _render(chosen, frames, out, escape, text)
    elif helper == "with":
        if is_empty(value):
            _render(block.inverse, frames, out, escape, text)
        else:
            _render(block.body, [*frames, Frame(value, {})], out, escape, text)
    elif isinstance(value, dict | list | tuple) and value:
        _each(block, value, frames, out, escape, text)
    else:
        _render(block.inverse, frames, out, escape, text)


def _each(
    block: Block,
    value: Any,
    frames: list[Frame],
    out: list[str],
    escape: Callable[[str], str],
    text: Callable[[Any], str],
) -> None:
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    last = len(items) - 1
    for index, (key, item) in enumerate(items):
        data = {"index": index, "key": key, "first": index == 0, "last": index == last}
        _render(block.body, [*frames, Frame(item, data)], out, escape, text)
