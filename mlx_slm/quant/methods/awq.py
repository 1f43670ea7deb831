"""Method "awq": activation-aware rescaling of each norm / linear and the linears it feeds, then
its quantizer (affine only; :mod:`mlx_slm.quant.awq`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from ...quantize import post_training, quantize_calibrated
from .. import awq
from . import Method, MethodOptions, option, register


@dataclass
class AWQConfig(MethodOptions):
    """Settings of the AWQ search (:data:`mlx_slm.quant.awq.DEFAULTS`)."""

    grid: int = option(awq.DEFAULTS["grid"], "alpha points searched in [0, 1] per scaling group")
    quantizer: str = option(awq.DEFAULTS["quantizer"], "what quantizes the rescaled layers: imatrix (which "
                                                       "also searches each group's range) or gptq",
                            choices=awq.QUANTIZERS)

    def check(self) -> AWQConfig:
        awq.check_options(asdict(self))
        return self

    def uses(self, weight_format: str) -> tuple[str, ...]:
        return ("gptq",) if self.quantizer == "gptq" else ()


def apply(model, plan: dict, job) -> None:
    settings = job.settings.options_of("awq")
    job.record["awq"] = asdict(settings)
    if settings.quantizer == "gptq":
        job.record["gptq"] = asdict(job.settings.options_of("gptq"))
    choice = quantize_calibrated(model, plan, "awq", job)
    alphas = [alpha for _, alpha in choice.scaled if alpha is not None]
    job.record["awq"].update(groups=len(choice.scaled), scaled_groups=sum(a > 0 for a in alphas),
                             mean_alpha=round(float(np.mean(alphas)), 4) if alphas else None)


register(Method("awq", "affine only: activation-aware scaling of each norm / linear and the linears it feeds, "
                       "then imatrix (or gptq)", partial(post_training, apply=apply), AWQConfig, formats=("affine",),
                calibrated=True, rank=3))
