"""Distillation: teacher -> student training on local text (needs MLX).

    from mlx_slm.distill import DistillConfig, distill
    history = distill(student, teacher, tokenizer, "train.txt", DistillConfig(steps=200), eval_text="valid.txt")
"""

from __future__ import annotations

from ..backend import require_mlx
from .config import DIVERGENCES, DistillConfig

__all__ = ["distill", "DistillConfig", "DIVERGENCES"]


def distill(student, teacher, tokenizer, text, config: DistillConfig | None = None, **options) -> list[dict]:
    """Train ``student`` in place towards ``teacher``; see :func:`mlx_slm.distill.trainer.distill`."""
    require_mlx("distillation")
    from .trainer import distill as run

    return run(student, teacher, tokenizer, text, config, **options)
