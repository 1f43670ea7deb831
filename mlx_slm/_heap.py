"""Keep freed memory inside the process on Linux (glibc), so large arrays reuse warm pages.

glibc serves every allocation above 32 MB with its own ``mmap`` and gives it back with
``munmap`` when freed. Quantizing, evaluating and training allocate and free such arrays
(a layer's float32 copy, a Gram matrix, an activation batch) thousands of times. In a
virtual machine whose guest reports free pages to the host (Firecracker, many cloud VMs)
every fresh page then costs a fault in the host as well, many times the cost of reusing a
warm one. :func:`keep_freed` tells glibc to serve large blocks from its heap (``M_MMAP_MAX``
0) and to shrink it only when more than 2 GB at its top is free (``M_TRIM_THRESHOLD``), so
freed memory is reused by the next array. The cost is fragmentation (a somewhat larger peak
resident size) and up to 2 GB of freed memory staying with the process instead of going back
to the system.

``MLX_SLM_HEAP=system`` keeps glibc's defaults. Other systems (macOS' allocator) are
left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
TRIM_ABOVE = 2**31 - 1  # bytes free at the heap's top before glibc gives them back (mallopt takes an int)

kept: bool = False
reason: str = "not attempted"


def keep_freed() -> None:
    """On Linux with glibc, keep freed blocks in the heap (unless ``MLX_SLM_HEAP=system``)."""
    global kept, reason
    if sys.platform != "linux":
        reason = "not Linux: the system allocator is left alone"
        return
    if os.environ.get("MLX_SLM_HEAP", "").lower() == "system":
        reason = "glibc's defaults (MLX_SLM_HEAP=system)"
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        reason = "no glibc mallopt: the system allocator is left alone"
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE) == 1:
        kept, reason = True, "freed memory kept in the heap"
    else:
        reason = "glibc refused mallopt: its defaults stay"


def describe() -> str:
    """One line for ``mlx-slm info`` and benchmark records."""
    return reason
