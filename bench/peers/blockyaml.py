"""A small reader for the block-style YAML that `gatewright translate` and
`egctl x translate` print, so the benchmark needs nothing outside Python's
standard library.

It reads what those two emitters write: block mappings and sequences (a
sequence may sit at its parent key's indentation), compact `- key: value`
items, plain, single- and double-quoted scalars, block scalars (`|`, `>`
with chomping indicators) and the empty flow collections `{}` and `[]`.
Anything else (anchors, tags, non-empty flow collections, multi-line plain
or quoted scalars) raises ValueError rather than being misread. One
document only; a leading `---` line is skipped.
"""

import json
import re

_PLAIN_INT = re.compile(r"^[-+]?[0-9]+$")
_PLAIN_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")


class _Lines:
    def __init__(self, text: str):
        self.items: list[tuple[int, str, int]] = []  # (indent, content, line number)
        for number, raw in enumerate(text.split("\n"), start=1):
            stripped = raw.lstrip(" ")
            if stripped == "" or stripped.startswith("#"):
                # Blank lines matter only inside block scalars, which read
                # the raw text themselves.
                self.items.append((-1, "", number))
                continue
            if "\t" in raw[: len(raw) - len(stripped)]:
                raise ValueError(f"line {number}: tab in indentation")
            self.items.append((len(raw) - len(stripped), stripped.rstrip(), number))
        self.raw = text.split("\n")

    def next_content(self, i: int) -> int:
        while i < len(self.items) and self.items[i][0] < 0:
            i += 1
        return i


def _scalar(text: str, number: int):
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text == "{}":
        return {}
    if text == "[]":
        return []
    first = text[0]
    if first == "'":
        if len(text) < 2 or not text.endswith("'"):
            raise ValueError(f"line {number}: unterminated single-quoted scalar")
        body = text[1:-1]
        if re.search(r"(?<!')'(?!')", body.replace("''", "")):
            raise ValueError(f"line {number}: stray quote in single-quoted scalar")
        return body.replace("''", "'")
    if first == '"':
        if len(text) < 2 or not text.endswith('"'):
            raise ValueError(f"line {number}: unterminated double-quoted scalar")
        try:
            # YAML's double-quoted escapes that these emitters use are a
            # subset of JSON's, plus \x.. and \/; map the extra one first.
            body = re.sub(r"\\x([0-9a-fA-F]{2})", r"\\u00\1", text)
            return json.loads(body)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {number}: double-quoted scalar: {e}") from None
    if first in "[{&*!|>%@`":
        raise ValueError(f"line {number}: unsupported YAML construct: {text[:40]!r}")
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _PLAIN_INT.match(text):
        return int(text)
    if _PLAIN_FLOAT.match(text):
        return float(text)
    return text


def _split_key(content: str, number: int):
    """`key: rest` or `key:` -> (key, rest); None if not a mapping entry."""
    if content[0] in "'\"":
        quote = content[0]
        j = 1
        while j < len(content):
            if content[j] == quote:
                if quote == "'" and j + 1 < len(content) and content[j + 1] == "'":
                    j += 2
                    continue
                if quote == '"' and content[j - 1] == "\\":
                    j += 1
                    continue
                break
            j += 1
        key = _scalar(content[: j + 1], number)
        rest = content[j + 1 :]
        if rest == ":":
            return key, ""
        if rest.startswith(": "):
            return key, rest[2:].strip()
        return None
    match = re.match(r"^([^:#]*?|[^ ][^#]*?):( |$)", content)
    if not match:
        return None
    key = _scalar(match.group(1), number) if match.group(1) else None
    return key, content[match.end() :].strip()


class _Parser:
    def __init__(self, text: str):
        self.lines = _Lines(text)
        # Compact items: `- key: v` is read as if `key: v` sat two columns
        # further in; these overrides say so for the item's first line.
        self.override: dict[int, tuple[int, str]] = {}

    def line(self, i: int) -> tuple[int, str, int]:
        indent, content, number = self.lines.items[i]
        if i in self.override:
            indent, content = self.override[i]
        return indent, content, number

    def node(self, i: int, indent: int):
        i = self.lines.next_content(i)
        if i >= len(self.lines.items):
            return None, i
        _, content, _ = self.line(i)
        if content == "-" or content.startswith("- "):
            return self.sequence(i, indent)
        return self.mapping(i, indent)

    def sequence(self, i: int, indent: int):
        out = []
        while True:
            i = self.lines.next_content(i)
            if i >= len(self.lines.items):
                break
            ind, content, number = self.line(i)
            if ind < indent:
                break
            if ind > indent:
                raise ValueError(f"line {number}: unexpected indentation")
            if not (content == "-" or content.startswith("- ")):
                break
            rest = content[1:].lstrip(" ")
            if rest == "":
                j = self.lines.next_content(i + 1)
                if j < len(self.lines.items) and self.line(j)[0] > indent:
                    value, i = self.node(j, self.line(j)[0])
                else:
                    value, i = None, i + 1
            elif rest.startswith("- ") or rest == "-" or _split_key(rest, number) is not None:
                inner = indent + (len(content) - len(rest))
                self.override[i] = (inner, rest)
                value, i = self.node(i, inner)
            else:
                value, i = self.value_text(rest, i, indent, number)
            out.append(value)
        return out, i

    def mapping(self, i: int, indent: int):
        out: dict = {}
        while True:
            i = self.lines.next_content(i)
            if i >= len(self.lines.items):
                break
            ind, content, number = self.line(i)
            if ind < indent:
                break
            if ind > indent:
                raise ValueError(f"line {number}: unexpected indentation")
            if content == "-" or content.startswith("- "):
                break
            split = _split_key(content, number)
            if split is None:
                raise ValueError(f"line {number}: expected `key: value`, got {content[:60]!r}")
            key, rest = split
            if key in out:
                raise ValueError(f"line {number}: duplicate key {key!r}")
            if rest == "":
                j = self.lines.next_content(i + 1)
                if j < len(self.lines.items):
                    jind, jcontent, _ = self.line(j)
                    if jind > indent:
                        out[key], i = self.node(j, jind)
                        continue
                    if jind == indent and (jcontent == "-" or jcontent.startswith("- ")):
                        out[key], i = self.sequence(j, indent)
                        continue
                out[key], i = None, i + 1
            else:
                out[key], i = self.value_text(rest, i, indent, number)
        return out, i

    def value_text(self, rest: str, i: int, indent: int, number: int):
        if rest[0] in "|>":
            return self.block_scalar(rest, i, indent, number)
        return _scalar(rest, number), i + 1

    def block_scalar(self, header: str, i: int, indent: int, number: int):
        if not re.match(r"^[|>][-+]?$", header):
            raise ValueError(f"line {number}: unsupported block scalar header {header!r}")
        folded, chomp = header[0] == ">", header[1:]
        j = i + 1
        body: list[str] = []
        block_indent = None
        while j < len(self.lines.items):
            ind, _, _ = self.lines.items[j]
            if ind >= 0 and ind <= indent:
                break
            raw = self.lines.raw[j]
            if ind >= 0 and block_indent is None:
                block_indent = ind
            body.append(raw)
            j += 1
        block_indent = block_indent or indent + 1
        text_lines = [line[block_indent:] for line in body]
        while text_lines and text_lines[-1].strip() == "" and chomp != "+":
            text_lines.pop()
        text = (" " if folded else "\n").join(text_lines)
        if chomp != "-":
            text += "\n"
        return text, j


def loads(text: str):
    """The one document in `text`, as dicts, lists and scalars."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and lines[start].strip() in ("", "---"):
        if lines[start].strip() == "---":
            start += 1
            break
        start += 1
    body = "\n".join(lines[start:])
    parser = _Parser(body)
    value, i = parser.node(0, 0)
    i = parser.lines.next_content(i)
    if i < len(parser.lines.items):
        _, content, number = parser.line(i)
        raise ValueError(f"line {number + start}: unexpected content {content[:60]!r}")
    return value
