"""Write outputs so an interrupted run leaves nothing half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import SLMError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_directory(target, overwrite: bool = False):
    """Yield a temporary folder beside ``target``; rename it to ``target`` on success."""
    target = Path(target).expanduser().resolve()
    if target.exists() and not overwrite:
        raise SLMError(f"{target} already exists (pass --overwrite / overwrite=True to replace it)")
    if target.exists() and not target.is_dir():
        raise SLMError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    temporary.chmod(0o777 & ~current_umask())
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    temporary.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(target):
    """Yield a temporary path beside ``target``; move it over ``target`` on success."""
    target = Path(target).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    os.close(handle)
    Path(name).chmod(0o666 & ~current_umask())
    try:
        yield Path(name)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    os.replace(name, target)
