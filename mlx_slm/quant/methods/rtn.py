"""Method "rtn": round to nearest, no calibration (affine: what ``mlx_lm.convert -q`` stores)."""

from __future__ import annotations

from functools import partial

from ...model_access import access
from ...quantize import post_training, quantize_packed
from . import Method, register


def apply(model, plan: dict, job) -> None:
    if job.formats - {"affine"}:
        quantize_packed(model, plan, "rtn", job)
    else:
        access(model).round_affine(plan, job.progress)


register(Method("rtn", "round to nearest (affine: identical to mlx_lm.convert -q; lut: plain k-means; "
                       "ternary: absmean)", partial(post_training, apply=apply), rank=0))
