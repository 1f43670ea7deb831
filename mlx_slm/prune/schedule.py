"""Gradual pruning: the polynomial-decay sparsity schedule of Zhu & Gupta (2017)."""

from __future__ import annotations

from ..errors import SLMError


def sparsity_at(step: int, initial: float, final: float, start_step: int, end_step: int, power: float = 3) -> float:
    """Target sparsity at ``step``:
    ``final + (initial - final) * (1 - (step - start_step) / (end_step - start_step)) ** power``,
    ``initial`` before ``start_step`` and ``final`` from ``end_step`` on.

    With power > 0 and initial <= final it rises monotonically, fast at first
    (when many redundant weights are left) and slowly near the end.
    """
    for name, value in (("initial", initial), ("final", final)):
        if not 0.0 <= value < 1.0:
            raise SLMError(f"{name} sparsity must be in [0, 1), not {value}")
    if end_step <= start_step:
        raise SLMError(f"end_step ({end_step}) must be after start_step ({start_step})")
    if power <= 0:
        raise SLMError(f"power must be > 0, not {power}")
    if step <= start_step:
        return float(initial)
    if step >= end_step:
        return float(final)
    progress = (step - start_step) / (end_step - start_step)
    return float(final + (initial - final) * (1.0 - progress) ** power)
