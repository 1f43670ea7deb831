"""Settings of block-wise reconstruction; importable without MLX (the CLI builds its options from it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import SLMError

FIELD_HELP = {
    "start": "the method whose result the blocks start from: gptq for the affine format, imatrix for lut "
             "and ternary (which gptq does not serve) when not given",
    "epochs": "passes over the training windows per block",
    "batch_size": "calibration windows per Adam step",
    "learning_rate": "Adam's rate for the weights, relative to each layer's quantization step "
                     "(1e-3 moves a weight by about a thousandth of a step per step)",
    "scale_learning_rate": "Adam's rate for scales, biases, palettes and row scales, relative to their size",
    "inputs": "'quantized': each block trains on the outputs of the trained blocks before it; 'float': on "
              "the float model's; the target is the float model's block output either way",
    "held_out": "fraction of the calibration windows kept out of training; a block keeps its start unless "
                "its error on them drops",
    "seed": "seed of the batch order",
}


STARTS = ("rtn", "imatrix", "gptq", "awq")


def default_start(weight_format: str) -> str:
    """The start when none is given: gptq for the affine format, imatrix for lut and ternary."""
    return "gptq" if weight_format == "affine" else "imatrix"
INPUTS = ("quantized", "float")


@dataclass
class BlockwiseConfig:
    """Settings of :func:`mlx_slm.quant.blockwise.reconstruct_blocks` (and of
    ``quantize(method="blockwise")``); :data:`FIELD_HELP` says what each field means."""

    start: str | None = None
    epochs: int = 2
    batch_size: int = 4
    learning_rate: float = 1e-3
    scale_learning_rate: float = 1e-3
    inputs: str = "quantized"
    held_out: float = 0.125
    seed: int = 0

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
        return self

    @classmethod
    def from_options(cls, options: dict | None) -> BlockwiseConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(options or {}) - known
        if unknown:
            raise SLMError(f"unknown blockwise options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**(options or {})).check()
