"""How each Metal kernel is declared and launched; shared by the GPU path and the CPU emulator.

Nothing here imports MLX: the emulator tests run these specs with numpy arrays.
"""

from __future__ import annotations

SIMD_WIDTH = 32
ROWS_PER_THREADGROUP = 4

KERNELS = {
    "lut_matvec": (["x", "weight", "lut", "scales"], ["out"]),
    "ternary_matvec": (["x", "weight", "scales"], ["out"]),
}


def launch_shape(out_rows: int) -> tuple[tuple, tuple]:
    """(grid, threadgroup): one simdgroup of 32 lanes per output row, 4 rows per threadgroup."""
    return (SIMD_WIDTH, out_rows, 1), (SIMD_WIDTH, ROWS_PER_THREADGROUP, 1)


def lut_template(dtype, bits: int, group_size: int, has_scale: bool) -> list:
    """Template of ``lut_matvec`` for activations of ``dtype``."""
    return [("T", dtype), ("BITS", bits), ("GROUP", group_size), ("HAS_SCALE", has_scale)]


def ternary_template(dtype, width: int, scale_groups: int) -> list:
    """Template of ``ternary_matvec``: GROUP = weights per scale along K (K for one scale per row)."""
    return [("T", dtype), ("GROUP", width // scale_groups)]
