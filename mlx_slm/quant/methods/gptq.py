"""Method "gptq": error-compensating rounding with each layer's input Hessian (affine and ternary:
:mod:`mlx_slm.quant.gptq`, :mod:`mlx_slm.quant.ternary_gptq`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

from ...errors import SLMError
from ...quantize import post_training, quantize_calibrated
from . import Method, MethodOptions, option, register

GRIDS = ("imatrix", "rtn")


@dataclass
class GPTQConfig(MethodOptions):
    """Settings of :func:`mlx_slm.quant.gptq.gptq_quantize`."""

    damp: float = option(0.01, "dampening added to the Hessian's diagonal, relative to its mean")
    block_size: int = option(32, "columns rounded together before the rest is updated")
    act_order: bool = option(True, "round columns in order of decreasing Hessian diagonal")
    grid: str = option("imatrix", "how each group's scale and bias are chosen: imatrix (importance-weighted "
                                  "search; ternary: absmean refitted on the importance) or rtn (min/max; "
                                  "ternary: absmean)", choices=GRIDS)
    refit: bool = option(True, "refit scales (and biases) to the chosen codes")

    def check(self) -> GPTQConfig:
        if self.grid not in GRIDS:
            raise SLMError(f"gptq grid must be 'imatrix' or 'rtn', not {self.grid!r}")
        if not (math.isfinite(self.damp) and self.damp >= 0) or self.block_size < 1:
            raise SLMError(f"gptq needs damp >= 0 and block_size >= 1, not {self.damp} and {self.block_size}")
        return self


def apply(model, plan: dict, job) -> None:
    job.record["gptq"] = asdict(job.settings.options_of("gptq"))
    quantize_calibrated(model, plan, "gptq", job)


register(Method("gptq", "affine and ternary: error-compensating rounding (GPTQ) on each layer's calibration "
                        "inputs", partial(post_training, apply=apply), GPTQConfig,
                formats=("affine", "ternary", "ternary_b3"), calibrated=True, rank=2))
