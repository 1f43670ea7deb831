"""How each Metal kernel is declared and launched; shared by the GPU path and the CPU emulator.

Nothing here imports MLX: the emulator tests run these specs with numpy arrays.
"""

from __future__ import annotations

SIMD_WIDTH = 32
SIMDGROUPS_PER_THREADGROUP = 2
MAX_X_ROWS = 8  # M: rows of activations the matrix-vector kernels take

KERNELS = {
    "lut_matvec": (["x", "weight", "lut", "scales"], ["out"]),
    "ternary_matvec": (["x", "weight", "scales"], ["out"]),
}


def rows_per_simdgroup(x_rows: int) -> int:
    """Output rows one simdgroup computes, reusing each x value it loads for all of them: 8 for
    decode (M <= 2: x then costs 16-bit activations 1/4 byte per weight), 4 above (its M x 4
    accumulators stay in registers)."""
    return 8 if x_rows <= 2 else 4


def launch_shape(out_rows: int, x_rows: int) -> tuple[tuple, tuple]:
    """(grid, threadgroup) for ``out_rows`` output rows and ``x_rows`` rows of x: one simdgroup of
    32 lanes per ``rows_per_simdgroup`` rows, SIMDGROUPS_PER_THREADGROUP simdgroups per threadgroup."""
    rows_per_group = rows_per_simdgroup(x_rows) * SIMDGROUPS_PER_THREADGROUP
    groups = max(1, -(-out_rows // rows_per_group))
    return ((SIMD_WIDTH, groups * SIMDGROUPS_PER_THREADGROUP, 1),
            (SIMD_WIDTH, SIMDGROUPS_PER_THREADGROUP, 1))


def _layout(x_rows: int) -> list:
    return [("ROWS", rows_per_simdgroup(x_rows)), ("SIMDGROUPS", SIMDGROUPS_PER_THREADGROUP)]


def lut_template(dtype, x_rows: int, bits: int, group_size: int, has_scale: bool) -> list:
    """Template of ``lut_matvec`` for ``x_rows`` (1..8) rows of activations of ``dtype``."""
    return [("T", dtype), ("M", x_rows), ("BITS", bits), ("GROUP", group_size), ("HAS_SCALE", has_scale),
            *_layout(x_rows)]


def ternary_template(dtype, x_rows: int, width: int, scale_groups: int) -> list:
    """Template of ``ternary_matvec``: GROUP = weights per scale along K (K for one scale per row)."""
    return [("T", dtype), ("M", x_rows), ("GROUP", width // scale_groups), *_layout(x_rows)]
