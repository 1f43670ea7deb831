"""Write outputs so an interrupted run leaves nothing half-written and no user file is lost.

Every folder written here is built in ``.NAME.partial-PID-*`` beside its target and
renamed into place. It carries a marker file (:data:`MARKER`) listing the files this
tool wrote, and an existing folder is replaced only when it is empty or holds nothing
but what its marker lists: never the current folder or one of its ancestors, never one
of the run's inputs (the model being saved was loaded from, the files a command reads)
or a folder holding one, never a folder with files of the user's. Leftovers of killed
runs (``.NAME.partial-PID-*`` and ``.NAME.old-PID`` whose process is gone) are removed
by the next write to the same target; an ``.old`` folder whose target is missing (a run
killed between its two renames) is put back instead. Temporary folders are registered
with :mod:`mlx_slm.interrupt`, so Ctrl-C in the command removes them too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import SLMError
from ..interrupt import deferred, scratch

MARKER = ".mlx-slm-output.json"
log = logging.getLogger(__name__)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _contains(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


def foreign_files(folder: Path, limit: int = 20) -> list[str]:
    """Up to ``limit`` files in ``folder`` (relative paths) that its marker does not list as ours."""
    try:
        written = set(json.loads((folder / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        written = set()
    foreign = []
    for path in folder.rglob("*"):
        name = str(path.relative_to(folder))
        if not path.is_dir() and name != MARKER and name not in written:
            foreign.append(name)
            if len(foreign) == limit:
                break
    return sorted(foreign)


def refuse_inputs(target, inputs=()) -> Path:
    """Refuse ``target`` if it is, or holds, one of ``inputs`` (paths this run reads); return it resolved."""
    target = Path(target).expanduser().resolve()
    for path in (Path(p).expanduser().resolve() for p in inputs if p is not None):
        if _contains(target, path):
            what = "is" if path == target else "holds"
            raise SLMError(f"{target} {what} an input of this run ({path}); write the output elsewhere")
    return target


def check_output(target, overwrite: bool = False, inputs=()) -> Path:
    """Refuse an output folder that may not be written; return its resolved path.

    The same check runs before any work (the CLI calls it first) and again just before
    the rename. ``inputs``: paths the run reads, which the output may neither be nor hold.
    """
    target = refuse_inputs(target, inputs)
    sweep_leftovers(target)
    if not target.exists():
        return target
    if not target.is_dir():
        raise SLMError(f"{target} exists and is not a folder")
    if not overwrite:
        raise SLMError(f"{target} already exists (pass --overwrite / overwrite=True to replace it)")
    if _contains(target, Path.cwd().resolve()):
        raise SLMError(f"refusing to replace {target}: it is the current folder or holds it")
    foreign = foreign_files(target)
    if foreign:
        more = " and others" if len(foreign) > 1 else ""
        raise SLMError(f"refusing to replace {target}: it holds files mlx-slm did not write "
                       f"({foreign[0]}{more}); remove them or choose another output")
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def sweep_leftovers(target: Path) -> None:
    """Clear ``.NAME.partial-PID-*`` / ``.NAME.old-PID`` beside ``target`` whose process is gone
    (an ``.old`` one is renamed back to ``target`` when ``target`` is missing)."""
    if not target.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(partial|old)-(\d+)(-.*)?$")
    for entry in target.parent.iterdir():
        found = pattern.match(entry.name)
        if not found or int(found.group(2)) == os.getpid() or _alive(int(found.group(2))):
            continue
        if found.group(1) == "old" and not target.exists():
            log.warning("restoring %s from %s, left by a run killed while replacing it", target, entry.name)
            entry.rename(target)
        else:
            log.warning("removing %s, left by an interrupted run", entry)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def write_marker(folder: Path) -> None:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())
    (folder / MARKER).write_text(json.dumps({"files": [f for f in files if f != MARKER]}, indent=0))


@contextmanager
def atomic_directory(target, overwrite: bool = False, inputs=()):
    """Yield a temporary folder beside ``target``; rename it to ``target`` on success (see module doc)."""
    target = check_output(target, overwrite, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    temporary.chmod(0o777 & ~current_umask())
    with scratch(temporary):
        try:
            yield temporary
            write_marker(temporary)
            check_output(target, overwrite, inputs)  # the folder may have changed during the work
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        with deferred():
            if target.exists():
                target.rename(old)
            temporary.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(target, inputs=()):
    """Yield a temporary path beside ``target``; move it over ``target`` on success (never over ``inputs``)."""
    target = refuse_inputs(target, inputs)
    if target.is_dir():
        raise SLMError(f"{target} is a folder, not a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent)
    os.close(handle)
    Path(name).chmod(0o666 & ~current_umask())
    with scratch(name):
        try:
            yield Path(name)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        os.replace(name, target)
