"""Method "learned": the start method, then every affine layer's scales and biases trained by KL
distillation from the float model (:mod:`mlx_slm.quant.learned`; MLX only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ...errors import SLMError
from . import Method, MethodOptions, option, register

STARTS = ("rtn", "imatrix", "gptq", "awq", "blockwise", "e2e")


@dataclass
class LearnedConfig(MethodOptions):
    """Settings of :func:`mlx_slm.quant.learned.learn_quantization` (and the method it starts from)."""

    start: str = option("gptq", "the method whose output is trained", choices=STARTS)
    steps: int = option(200, "most training steps (stops early on held-out KL)")
    batch_size: int = option(4, "calibration windows per step")
    learning_rate: float = option(3e-5, "Adam's rate, relative to each layer's mean scale", flag="lr")
    top_k: int = option(1024, "teacher logits kept per position (>= the vocabulary: the exact KL)")
    eval_every: int = option(10, "steps between held-out evaluations")
    patience: int = option(4, "evaluations without improvement before stopping")
    held_out: float = option(0.125, "fraction of the calibration windows held out")
    seed: int = option(0, "seed of the batch order")

    def check(self) -> LearnedConfig:
        if self.start not in STARTS:
            raise SLMError(f"learned start must be one of {', '.join(STARTS)}, not {self.start!r}")
        for name in ("batch_size", "top_k", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise SLMError(f"learned option {name} must be at least 1, not {getattr(self, name)}")
        if self.steps < 0 or not self.learning_rate > 0 or not 0 < self.held_out < 1:
            raise SLMError("learned options need steps >= 0, learning_rate > 0 and 0 < held_out < 1")
        return self

    def uses(self, weight_format: str) -> tuple[str, ...]:
        return (self.start,)

    def training(self) -> dict:
        """The fields :func:`~mlx_slm.quant.learned.learn_quantization` reads (all but ``start``)."""
        return {k: v for k, v in asdict(self).items() if k != "start"}


def run(model, settings, calibration, progress):
    from ...quantize import float_teacher, record_result, run_method
    from ..learned import learn_quantization

    config = settings.options_of("learned")
    tokens, record = calibration.windows()
    teacher = float_teacher(model)
    run_method(model, replace(settings, method=config.start), calibration, progress)
    done = learn_quantization(model, teacher, tokens, progress=progress, **config.training())
    record_result(model, method="learned", calibration=record, learned={"start": config.start, **done})
    return model


def report(record: dict) -> str:
    done = record["learned"]
    return (f"learned from {done['start']}: held-out KL {done['start_kl']:.4f} -> {done['final_kl']:.4f} "
            f"after {done['steps_run']} steps" + (" (the start was kept)" if done["kept_start"] else ""))


register(Method("learned", "MLX only: the start (gptq by default), then scales and biases trained by KL "
                           "distillation from the float model, never worse than the start on held-out windows",
                run, LearnedConfig, formats=("affine",), calibrated=True, training=True, report=report, rank=5))
