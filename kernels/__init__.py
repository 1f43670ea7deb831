"""Metal kernels for the low-bit formats MLX lacks, and their CPU emulator.

This folder is installed as the subpackage ``mlx_slm.kernels``; the ``.metal``
files are package data read with :func:`metal_source`.
"""

from __future__ import annotations

from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent


def metal_source(name: str) -> str:
    """The text of ``kernels/<name>.metal``."""
    return (KERNEL_DIR / f"{name}.metal").read_text()
