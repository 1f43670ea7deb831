"""Method "rtn": round to nearest, no calibration (affine: what ``mlx_lm.convert -q`` stores)."""

from __future__ import annotations

from functools import partial

from ...backend import backend_of
from ...formats import get_format
from ...quantize import apply_mlx, apply_numpy, post_training, quantize_packed
from . import Method, register


def apply(model, plan: dict, job) -> None:
    if job.formats - {"affine"}:
        quantize_packed(model, plan, "rtn", job)
    elif backend_of(model) == "numpy":
        apply_numpy(model, plan, get_format("affine"), job.progress)
    else:
        apply_mlx(model, plan)


register(Method("rtn", "round to nearest (affine: identical to mlx_lm.convert -q; lut: plain k-means; "
                       "ternary: absmean)", partial(post_training, apply=apply), rank=0))
