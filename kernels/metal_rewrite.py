"""Turn Metal kernel text into the C++ the emulator compiles against ``metal_shim.h``.

The rewrite keeps every line where it was (compiler messages point at the
kernel text) and changes only what plain C++ cannot express:

- comments are blanked (so nothing below matches inside them);
- ``#include <metal_*>`` lines are dropped;
- ``threadgroup T name[N];`` becomes a checked array in the shared ``emu_tg``
  section;
- a pointer qualified with an address space (``const device T*``,
  ``constant T*``, ``threadgroup T*``, ``thread T*``) becomes
  ``emu::ptr<emu::<space>_space, const T>``, a distinct type per space, so
  mixing spaces fails to compile as it does in Metal; ``reinterpret_cast`` /
  ``static_cast`` to such a pointer becomes ``emu::cast`` (same space only);
  qualified references and ``auto`` pointers drop the qualifier (references are
  not checked); program-scope ``constant`` becomes ``const``;
- a thread-private array ``T name[N]...`` becomes ``emu::array<T, N, id>``,
  whose indexing is checked; ``id`` numbers the array in :class:`Arrays` so a
  fault can name it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A type name: optional namespaces, optional template arguments (one level of nesting).
TYPE = r"(?:[A-Za-z_]\w*\s*::\s*)*[A-Za-z_]\w*(?:\s*<[^<>;]*(?:<[^<>;]*>[^<>;]*)*>)?"
SPACES = ("device", "constant", "threadgroup", "thread")

_COMMENT_OR_STRING = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
_METAL_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include[ \t]*<metal_\w+>[^\n]*$", re.MULTILINE)
_TG_DECL = re.compile(
    r"\bthreadgroup\s+((?:[A-Za-z_][\w:]*(?:\s*<[^<>;*&]*>)?\s+)+?)([A-Za-z_]\w*)\s*((?:\[[^\];]*\]\s*)*);")
_QUALIFIED = re.compile(
    rf"(?P<pre>\bconst\s+)?\b(?P<space>{'|'.join(SPACES)})\s+(?P<mid>const\s+)?(?P<type>{TYPE})\s*"
    r"(?P<post>const\s*)?(?P<kind>\*|&(?!&))")
_CAST = re.compile(r"\b(?:reinterpret_cast|static_cast)\s*<\s*(?=emu::ptr<)")
_CONSTANT = re.compile(r"(?:\bconst\s+)?\bconstant\b(?:\s+const\b)?")
_ARRAY_DECL = re.compile(
    rf"(?P<lead>(?:^|[;{{}}])\s*)(?P<quals>(?:(?:const|constexpr|static|thread)\s+)*)(?P<type>{TYPE})\s+"
    r"(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\[\];]+\]\s*)+)(?=[=;])", re.MULTILINE)
_NOT_TYPES = {"return", "else", "case", "goto", "typedef", "using", "delete", "new", "throw", "sizeof",
              "EMU_TG_DECL", "do", "co_return"}


@dataclass
class Arrays:
    """The checked arrays of one kernel: ``names[id]`` = (name and size as written, file, line)."""

    names: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, text: str, file: str, line: int) -> int:
        self.names.append((text, file, line))
        return len(self.names) - 1


def blank_comments(text: str, strings: bool = False) -> str:
    """``text`` with comments (and, if ``strings``, string and character literals)
    replaced by spaces; newlines and every other position kept."""

    def blank(m: re.Match) -> str:
        s = m.group(0)
        if s[0] in "\"'" and not strings:
            return s
        return re.sub(r"[^\n]", " ", s)

    return _COMMENT_OR_STRING.sub(blank, text)


def _same_lines(original: str, replacement: str) -> str:
    return replacement + "\n" * (original.count("\n") - replacement.count("\n"))


def _checked_type(kind: str, dims: str, array_id: int) -> str:
    sizes = re.findall(r"\[([^\]]*)\]", dims)
    out = kind
    for size in reversed(sizes):
        out = f"emu::array<{out}, {size.strip()}, {array_id}>"
    return out


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _threadgroup_arrays(text: str, file: str, arrays: Arrays) -> str:
    def declare(m: re.Match) -> str:
        kind, name, dims = m.group(1).strip(), m.group(2), m.group(3).strip()
        if dims:
            array_id = arrays.add(name + dims, file, _line(text, m.start()))
            decl = f"EMU_TG_DECL({_checked_type(kind, dims, array_id)}) {name}; EMU_TG_ESCAPE({name});"
        else:
            decl = f"EMU_TG_DECL({kind}) {name}; EMU_TG_ESCAPE({name});"
        return _same_lines(m.group(0), decl)

    return _TG_DECL.sub(declare, text)


def _qualified_pointers(text: str) -> str:
    def pointer(m: re.Match) -> str:
        const = "const " if (m.group("pre") or m.group("mid") or m.group("post")) else ""
        kind = re.sub(r"\s+", " ", m.group("type"))
        if kind == "auto":
            return _same_lines(m.group(0), "auto")
        if m.group("kind") == "&":
            return _same_lines(m.group(0), f"{const}{kind}&")
        return _same_lines(m.group(0), f"emu::ptr<emu::{m.group('space')}_space, {const}{kind}>")

    text = _QUALIFIED.sub(pointer, text)
    text = _CAST.sub("emu::cast<", text)
    return _CONSTANT.sub("const", text)


def _private_arrays(text: str, file: str, arrays: Arrays) -> str:
    def declare(m: re.Match) -> str:
        kind = m.group("type")
        if kind in _NOT_TYPES:
            return m.group(0)
        quals = m.group("quals").replace("thread ", "")
        name, dims = m.group("name"), re.sub(r"\s+", "", m.group("dims"))
        array_id = arrays.add(name + dims, file, _line(text, m.start("name")))
        decl = f"{m.group('lead')}{quals}{_checked_type(kind, dims, array_id)} {name} "
        return _same_lines(m.group(0), decl)

    return _ARRAY_DECL.sub(declare, text)


def metal_to_cxx(text: str, file: str, arrays: Arrays) -> str:
    """The C++ for kernel text ``text`` (``file``: "header" or "source"), with the
    checked arrays it declares added to ``arrays``."""
    text = _METAL_INCLUDE.sub("", blank_comments(text))
    text = _threadgroup_arrays(text, file, arrays)
    text = _qualified_pointers(text)
    return _private_arrays(text, file, arrays)
