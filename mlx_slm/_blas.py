"""Put a fast BLAS under MLX's CPU backend on Linux.

The Linux `mlx[cpu]` wheel links the reference netlib BLAS (a few GFLOP/s).
Loading an OpenBLAS with the same cblas ABI into the global symbol scope
*before* MLX is imported makes MLX's matmuls resolve to it (many times faster).
Set ``MLX_SLM_BLAS=off`` to keep the reference BLAS, or to a library path to
choose another. Install OpenBLAS with ``apt-get install libopenblas0-pthread``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

loaded: str | None = None
reason: str = "not attempted"


def preload() -> None:
    """Load OpenBLAS globally if we are on Linux and MLX is not imported yet."""
    global loaded, reason
    choice = os.environ.get("MLX_SLM_BLAS", "")
    if sys.platform != "linux":
        reason = "not Linux: MLX uses Accelerate/Metal"
        return
    if choice.lower() in ("off", "0", "none"):
        reason = "disabled by MLX_SLM_BLAS"
        return
    if "mlx.core" in sys.modules:
        reason = "mlx was imported before mlx_slm; import mlx_slm first for the fast BLAS"
        return
    paths = [choice] if choice else [p for p in CANDIDATES if Path(p).exists()]
    if not choice and (found := ctypes.util.find_library("openblas")):
        paths.append(found)
    for path in paths:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        loaded, reason = path, "loaded"
        return
    reason = "no OpenBLAS found (apt-get install libopenblas0-pthread); MLX CPU matmuls will be slow"


def describe() -> str:
    """One line for `mlx-slm info` and benchmark headers."""
    return f"OpenBLAS preloaded from {loaded}" if loaded else f"reference BLAS ({reason})"
