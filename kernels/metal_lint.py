"""Reject kernel text that g++ accepts but the Metal compiler does not.

The emulator compiles Metal as C++17, which allows far more than the Metal
Shading Language: 64-bit floats, the C++ standard library, dynamic allocation,
exceptions, function pointers, recursion, static locals, the C library's
printf, pointers without an address space, 64-bit atomics, goto, virtual
functions, RTTI, thread_local. :func:`lint` scans the header and body (comments
and string literals blanked) and names each such use with its ``header:LINE`` /
``source:LINE``, so a kernel that passes the emulator also has a chance on a GPU.
The scan is textual: it knows type names from Metal's scalar and vector types,
the kernel's type template arguments and the header's own declarations.
"""

from __future__ import annotations

import re

from .metal_rewrite import SPACES, blank_comments

_SCALARS = ("bool char uchar short ushort int uint long ulong half float bfloat float16_t bfloat16_t "
            "int8_t uint8_t int16_t uint16_t int32_t uint32_t int64_t uint64_t size_t ptrdiff_t void auto").split()
_VECTORS = [f"{t}{n}" for t in "bool char uchar short ushort int uint half float bfloat".split() for n in (2, 3, 4)]

# (pattern, message): constructs Metal rejects wherever they appear.
_FORBIDDEN = [
    (r"\blong\s+double\b", "long double: Metal has no long double"),
    (r"(?<!long )\bdouble\b", "double: Metal has no 64-bit floating point (use float)"),
    (r"\bstd\s*::", "std::: the C++ standard library does not exist in Metal (use metal::)"),
    (r"#\s*include\s*<(?!metal_)[^>]*>", "#include: only <metal_*> headers exist in Metal"),
    (r"\b(?:new|delete)\b", "new/delete: Metal has no dynamic allocation"),
    (r"\b(?:throw|try|catch)\b", "exceptions (throw/try/catch) are not supported in Metal"),
    (r"\(\s*\*\s*\w*\s*\)\s*\(", "function pointer: not supported in Metal kernels"),
    (r"\b(?:printf|fprintf|sprintf|snprintf|puts|malloc|calloc|free|exit|abort)\s*\(",
     "C library call (printf, malloc, ...): Metal has no C library"),
    (r"\batomic\s*<\s*(?:long|ulong|int64_t|uint64_t|size_t|long\s+long|unsigned\s+long|double)\s*>"
     r"|\batomic_u?long\b", "64-bit atomic: Metal atomics are 32-bit (atomic_int, atomic_uint, atomic_float)"),
    (r"\bgoto\b", "goto: not supported in Metal"),
    (r"\bvirtual\b", "virtual functions: not supported in Metal"),
    (r"\b(?:dynamic_cast|typeid)\b", "dynamic_cast/typeid: Metal has no RTTI"),
    (r"\b(?:thread_local|register)\b", "thread_local/register storage: not supported in Metal"),
]
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "return", "sizeof", "catch", "static_assert", "decltype"}
_FUNCTION = re.compile(r"\b([A-Za-z_]\w*)\s*\(([^;{}()]*(?:\([^;{}()]*\)[^;{}()]*)*)\)\s*(?:const\s*)?\{")


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _closing_brace(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text)


def _declared_types(header: str) -> set[str]:
    """Type names the header introduces: template type parameters, structs, typedefs, aliases."""
    names = set(re.findall(r"\b(?:typename|class|struct|union|enum)\s+([A-Za-z_]\w*)", header))
    names |= set(re.findall(r"\busing\s+([A-Za-z_]\w*)\s*=", header))
    names |= set(re.findall(r"\btypedef\b[^;]*?\b([A-Za-z_]\w*)\s*;", header))
    return names


def _functions(code: str) -> dict[str, tuple[int, int]]:
    """Functions defined in ``code``: name -> (start of body, end of body)."""
    found = {}
    for m in _FUNCTION.finditer(code):
        if m.group(1) not in _NOT_FUNCTIONS:
            found[m.group(1)] = (m.end() - 1, _closing_brace(code, m.end() - 1))
    return found


def _recursion(code: str) -> list[tuple[int, str]]:
    """Functions of ``code`` that call themselves, directly or through others."""
    bodies = _functions(code)
    calls = {name: {c for c in bodies if re.search(rf"\b{c}\s*\(", code[start + 1:end])}
             for name, (start, end) in bodies.items()}
    problems = []
    for name, (start, _) in bodies.items():
        seen, todo = set(), list(calls[name])
        while todo:
            callee = todo.pop()
            if callee not in seen:
                seen.add(callee)
                todo.extend(calls[callee])
        if name in seen:
            problems.append((start, f"recursion: '{name}' calls itself; Metal does not support recursive calls"))
    return problems


def _static_locals(code: str, whole_body: bool) -> list[tuple[int, str]]:
    """``static`` inside a function body (the kernel source is one)."""
    problems, frames = [], []
    for m in re.finditer(r"[{}]|\bstatic\b", code):
        token = m.group(0)
        if token == "{":
            before = code[:m.start()].rstrip()
            in_function = bool(frames and frames[-1]) or before.endswith((")", "const", "else", "do"))
            frames.append(in_function)
        elif token == "}":
            if frames:
                frames.pop()
        elif whole_body or (frames and frames[-1]):
            problems.append((m.start(), "static local variable: not supported in Metal"))
    return problems


def _unqualified_pointers(code: str, types: set[str]) -> list[tuple[int, str]]:
    """A pointer type (declaration or cast) with no address space before it."""
    names = "|".join(sorted(map(re.escape, types), key=len, reverse=True))
    problems = []
    for m in re.finditer(rf"(?<![\w.:])(?:{names})\b(?:\s*<[^<>;]*>)?\s*(?:const\s*)?\*", code):
        before = re.sub(r"(?:\bconst\s*)+$", "", code[:m.start()].rstrip()).rstrip()
        if not re.search(rf"\b(?:{'|'.join(SPACES)})$", before):
            problems.append((m.start(), f"pointer without an address space ('{' '.join(m.group(0).split())}'): "
                             "Metal needs device, constant, threadgroup or thread"))
    return problems


def lint(header: str, source: str, template_types: list[str]) -> list[str]:
    """Problems in the kernel text as ``file:LINE: message`` lines (empty when clean)."""
    types = set(_SCALARS) | set(_VECTORS) | set(template_types) | _declared_types(blank_comments(header, True))
    problems = []
    for file, text, whole_body in (("header", header, False), ("source", source, True)):
        code = blank_comments(text, strings=True)
        found = [(m.start(), message) for pattern, message in _FORBIDDEN for m in re.finditer(pattern, code)]
        found += _recursion(code) + _static_locals(code, whole_body) + _unqualified_pointers(code, types)
        problems += [f"{file}:{_line(code, pos)}: {message}" for pos, message in sorted(found)]
    return problems
