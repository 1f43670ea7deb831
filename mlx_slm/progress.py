"""Progress bars only where someone watches them."""

from __future__ import annotations


def hidden(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a bar the caller wants (``progress``) or not: None lets tqdm hide it
    when its stream is not a terminal, so logs and pipes get no carriage-return noise."""
    return None if progress else True
