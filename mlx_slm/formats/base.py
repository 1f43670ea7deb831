"""What every weight format provides (ARCHITECTURE.md's traits table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class WeightFormat:
    """One low-bit weight format.

    name: the registry key and the ``mode`` recorded in config.json.
    check(shape, bits, group_size): raise SLMError if the settings do not fit.
    pack(w [N, K], bits, group_size) -> stored arrays, in ``stored`` order.
    unpack(*stored, bits, group_size, dtype=None) -> w [N, K].
    matmul(x [..., K], *stored, bits, group_size) -> [..., N] float32.
    bits_per_weight(bits, group_size) -> storage bits per weight, overhead included.
    stored: parameter name suffixes of the stored arrays, e.g. ("weight", "scales", "biases").
    """

    name: str
    check: Callable
    pack: Callable
    unpack: Callable
    matmul: Callable
    bits_per_weight: Callable
    stored: tuple[str, ...]
