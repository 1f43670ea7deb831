"""Method "imatrix": values weighted by each input column's importance (mean squared activation)."""

from __future__ import annotations

from functools import partial

from ...quantize import post_training, quantize_calibrated, quantize_packed
from . import Method, register


def apply(model, plan: dict, job) -> None:
    if job.formats - {"affine"}:
        job.record["statistics"] = "one pass of the float model over the calibration windows"
        quantize_packed(model, plan, "imatrix", job)
    else:
        quantize_calibrated(model, plan, "imatrix", job)


register(Method("imatrix", "weighted by activation importance (affine scales and biases, lut k-means, ternary "
                           "scales), one decoder block at a time", partial(post_training, apply=apply),
                calibrated=True, rank=1))
