"""What the base model computes in while adapters train.

On a GPU nothing changes: float bases stay in their dtype and quantized bases stay
quantized (``quantized_matmul``; QLoRA's memory saving). On a CPU, MLX's float16
matmul and ``quantized_matmul`` are scalar code (0.05-4 GFLOP/s) while a float32
GEMM on OpenBLAS reaches 50-180, so for the duration of training every quantized
layer (also inside a LoRA layer) is swapped for a frozen float32 twin holding
exactly its dequantized weight, and the other float parameters are widened to
float32. The adapters see the same function (the quantized base's exact values),
so what they learn transfers; the quantized modules themselves are never touched
and are put back afterwards, bit-identical. Adapters stay float32 throughout.
"""

from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_unflatten

from ..runtime import computes_on_cpu, dense_twin, quantized_modules, restore_dtypes, widen_floats


def frozen_twin(module) -> nn.Module:
    twin = dense_twin(module)
    twin.freeze()
    return twin


@contextmanager
def training_precision(model, enabled: bool | None = None):
    """Within the block the base computes in float32 with dense weights (CPU only; see module doc)."""
    if enabled is None:
        enabled = computes_on_cpu()
    if not enabled:
        yield model
        return
    quantized = quantized_modules(model)
    model.update_modules(tree_unflatten([(path, frozen_twin(m)) for path, m in quantized]))
    narrow = widen_floats(model)
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(quantized))
        restore_dtypes(model, narrow)
        mx.eval(model.parameters())
