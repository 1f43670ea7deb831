"""Real English text found on this machine, for calibration and evaluation.

Nothing is downloaded. Debian's packages give the best texts (``bible-kjv`` for
calibration, ``fortunes`` for held-out evaluation); without them, the Python
standard library's own docstrings stand in.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
from pathlib import Path

from ..errors import SLMError

FORTUNE_FILES = ("computers", "science", "literature", "people", "wisdom", "work", "humorists")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
STDLIB_MODULES = ("argparse", "asyncio", "collections", "json", "logging", "pathlib", "re", "subprocess",
                  "threading", "typing", "unittest", "email", "http.client", "sqlite3")


def fortunes() -> str | None:
    texts = [(FORTUNES_DIR / name).read_text(encoding="utf-8", errors="replace")
             for name in FORTUNE_FILES if (FORTUNES_DIR / name).is_file()]
    return "\n".join(texts) or None


def king_james_bible() -> str | None:
    if not shutil.which("bible"):
        return None
    result = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, timeout=120,
                            check=False)
    return result.stdout if result.returncode == 0 and result.stdout.strip() else None


def stdlib_docstrings() -> str:
    pieces = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        pieces.append(inspect.getdoc(module) or "")
        pieces += [inspect.getdoc(obj) or "" for _, obj in inspect.getmembers(module)
                   if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__]
    return "\n\n".join(p for p in pieces if len(p) > 80)


def local_text(purpose: str) -> tuple[str, str]:
    """``(text, source name)`` for purpose "eval" (held-out prose) or "calib"."""
    if purpose == "eval":
        found = fortunes()
        return (found, "Debian fortunes") if found else (stdlib_docstrings(), "Python stdlib docstrings")
    if purpose == "calib":
        found = king_james_bible()
        return (found, "Debian bible-kjv") if found else (stdlib_docstrings(), "Python stdlib docstrings")
    raise SLMError(f"purpose must be 'eval' or 'calib', not {purpose!r}")
