"""Reading local text: .txt and .jsonl files (strictly UTF-8, binary refused) or lists of strings."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SLMError


def describe_text(text) -> str:
    """A text source as messages and records name it: its path, or how many strings it has."""
    if isinstance(text, (list, tuple)):
        return f"{len(text)} strings"
    return str(Path(text))


def read_text(text) -> str:
    """A list of strings, or a .txt / .jsonl path (each JSON line's "text" field); never empty."""
    content = join_text(text)
    if not content.strip():
        raise SLMError(f"the text {describe_text(text)} is empty")
    return content


def join_text(text) -> str:
    """The text of a source as read, before the emptiness check of :func:`read_text`."""
    if isinstance(text, (list, tuple)):
        return "\n\n".join(str(t) for t in text)
    path = Path(text)
    try:
        found, literal = path.is_file(), "\n" in str(text)
    except OSError:  # a long literal text taken for a path: "File name too long"
        found, literal = False, True
    if not found:
        shown = str(path).replace("\n", "\\n")  # one line
        shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
        raise SLMError(f"no such text file: {shown}"
                       + ("; pass literal text as a list of strings, e.g. [text]" if literal else ""))
    content = decode_text(path)
    if path.suffix.lower() == ".jsonl":
        pieces = []
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                pieces.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SLMError(f"{path}:{number}: each line must be a JSON object with a \"text\" field") from None
        return "\n\n".join(pieces)
    return content


def decode_text(path: Path) -> str:
    """The UTF-8 text of ``path``; SLMError naming the offset of a NUL or undecodable byte (binary input)."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise SLMError(f"{path} is not a text file: a NUL byte at offset {nul}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SLMError(f"{path} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
                       "cannot be decoded") from None
