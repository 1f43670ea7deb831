"""Method "blockwise": the start method, then every decoder block's weights and quantization
parameters trained through the format's rounding (:mod:`mlx_slm.quant.blockwise`; MLX only)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ...data.teacher_text import DATA
from ...errors import SLMError
from . import Method, MethodOptions, get_method, option, register

STARTS = ("rtn", "imatrix", "gptq", "awq")
INPUTS = ("quantized", "float")


def default_start(weight_format: str) -> str:
    """The start when none is given: gptq where the format takes it (affine, ternary), else imatrix (lut)."""
    return "gptq" if get_method("gptq").supports(weight_format) else "imatrix"


@dataclass
class BlockwiseConfig(MethodOptions):
    """Settings of :func:`mlx_slm.quant.blockwise.reconstruct_blocks`."""

    start: str | None = option(None, "the method whose result the blocks start from (default: gptq for the "
                                     "affine and ternary formats, imatrix for lut, which gptq does not serve)",
                               choices=STARTS)
    epochs: int = option(2, "passes over the training windows per block")
    batch_size: int = option(4, "calibration windows per Adam step")
    learning_rate: float = option(1e-3, "Adam's rate for the weights, relative to each layer's quantization "
                                        "step (1e-3 moves a weight by about a thousandth of a step per step)")
    scale_learning_rate: float = option(1e-3, "Adam's rate for scales, biases, palettes and row scales, "
                                              "relative to their size")
    inputs: str = option("quantized", "'quantized': each block trains on the outputs of the trained blocks "
                                      "before it; 'float': on the float model's; the target is the float "
                                      "model's block output either way", choices=INPUTS)
    held_out: float = option(0.125, "fraction of the calibration windows kept out of training; a block keeps "
                                    "its start unless its error on them drops")
    seed: int = option(0, "seed of the batch order (and of the teacher's sampling)")
    data: str = option("calib", "what the blocks train on: 'calib', the calibration windows, or 'teacher', as "
                                "many windows of text sampled from the float model (as LLM-QAT; the start "
                                "still calibrates on the calibration text, unless that is sampled too: "
                                "--calib-data teacher)", choices=DATA)
    checkpoint: str | None = option(None, "folder where every finished block is saved; a rerun with the same "
                                          "calibration, settings and start resumes after the last saved block "
                                          "(the folder is kept; a folder of another run is refused)")

    def check(self) -> BlockwiseConfig:
        if self.start is not None and self.start not in STARTS:
            raise SLMError(f"blockwise start must be one of {', '.join(STARTS)}, not {self.start!r}")
        if self.inputs not in INPUTS:
            raise SLMError(f"blockwise inputs must be one of {', '.join(INPUTS)}, not {self.inputs!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise SLMError(f"blockwise needs epochs >= 0 and batch_size >= 1, not {self.epochs} and "
                           f"{self.batch_size}")
        for name in ("learning_rate", "scale_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SLMError(f"blockwise {name} must be a positive number, not {value}")
        if not 0 < self.held_out < 1:
            raise SLMError(f"blockwise held_out must be between 0 and 1, not {self.held_out}")
        if self.data not in DATA:
            raise SLMError(f"blockwise data must be one of {', '.join(DATA)}, not {self.data!r}")
        return self

    def uses(self, weight_format: str) -> tuple[str, ...]:
        return (self.start or default_start(weight_format),)


def run(model, settings, calibration, progress):
    from ...data.windows import Calibration
    from ...quantize import float_teacher, record_result, run_method
    from ..blockwise import reconstruct_blocks

    config = settings.options_of("blockwise")
    config = replace(config, start=config.start or default_start(settings.format))
    tokens, record = calibration.windows()
    teacher = float_teacher(model)
    if config.data == "teacher" and calibration.data != "teacher":  # the record stays the calibration text's (the
        # start's); the report says data. A calibration on sampled text already is what this would sample.
        sampling = Calibration(None, calibration.tokenizer, *tokens.shape, data="teacher", seed=config.seed)
        tokens = sampling.sampled(teacher, progress).windows()[0]
    run_method(model, replace(settings, method=config.start), calibration, progress)
    report = reconstruct_blocks(model, teacher, tokens, config, progress=progress)
    record_result(model, method="blockwise", calibration=record, blockwise=report)
    return model


def report(record: dict) -> str:
    done = record["blockwise"]
    source = " on text sampled from the float model" if done.get("data") == "teacher" else ""
    return (f"blockwise from {done['start']}{source}: {done['improved_blocks']} of {done['trained_blocks']} blocks "
            f"improved on held-out windows, held-out KL {done['start_kl']:.4f} -> {done['final_kl']:.4f}"
            + (" (the start was kept)" if done["kept_start"] else "")
            + f" ({done['train_tokens']} tokens trained, {done['seconds']:.0f} s)")


register(Method("blockwise", "MLX only, any format: the start (gptq or imatrix), then each decoder block's "
                             "weights and quantization parameters trained through the format's rounding to "
                             "reproduce the float block's outputs, a block kept only where its held-out error "
                             "drops", run, BlockwiseConfig, calibrated=True, training=True, report=report, rank=4))
