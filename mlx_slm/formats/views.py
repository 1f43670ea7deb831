"""How a stored quantized layer computes its weight, for the exporters (Core ML today).

Each format row's ``view(stored, bits, group_size)`` turns its stored arrays into one of
these two shapes; an exporter maps the two shapes onto its runtime's ops and never
asks which format a layer is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def stored_bytes(stored: dict) -> int:
    """Bytes the model itself stores for one layer (every array present)."""
    return sum(a.nbytes for a in stored.values() if a is not None)


@dataclass
class AffineWeight:
    """``w = scales * codes + biases`` per group of ``group_size`` along K.

    codes: uint8 [N, K]; scales, biases: float32 [N, K / group_size] (exact copies).
    """

    codes: np.ndarray
    scales: np.ndarray
    biases: np.ndarray
    bits: int
    group_size: int
    stored_bytes: int  # what the model itself stores: packed codes + scales + biases

    @property
    def shape(self) -> tuple:
        return self.codes.shape


@dataclass
class PalettizedWeight:
    """``w[n, k] = row_scales[n] * lut[n // gN, k // gK, codes[n, k]]`` (row_scales optional).

    codes: uint8 [N, K]; lut: float16 [N / gN, K / gK, 2**bits]; row_scales: float16 [N, 1] or None.
    ``lut`` layers have one table per group of gN rows (gK = K); ``ternary`` layers one per row and
    scale group, holding ``[-s, 0, s, 0]`` (2-bit codes c = t + 1).
    """

    codes: np.ndarray
    lut: np.ndarray
    row_scales: np.ndarray | None
    bits: int
    mode: str
    group_size: int
    stored_bytes: int

    @property
    def shape(self) -> tuple:
        return self.codes.shape
