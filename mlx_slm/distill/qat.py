"""Quantization-aware training: fake-quantized linear layers with a straight-through estimator.

While training, each chosen ``nn.Linear`` computes with ``w + stop_gradient(q(w) - w)``:
the forward pass sees the quantized weight ``q(w)``, the backward pass treats q
as the identity, so the float weight keeps learning. ``q`` rounds exactly as the
saved format will: affine as ``mx.quantize`` (scales and biases in float16), and
ternary as BitNet b1.58's absmean (scale = mean |w| of the group, in float16,
weights rounded to {-1, 0, +1}). After training, :func:`remove_fake_quant` restores
plain layers holding the float weights and :func:`mlx_slm.quantize` stores them.

:class:`QuantizedTraining` is quantization-aware training of a student that is
already quantized (by gptq, blockwise, ...): each quantized linear layer trains
through its :mod:`mlx_slm.quant.fake_quant` twin, whose float weights AND the
format's own parameters (affine scales and biases, lut palettes, ternary scales)
learn (with the gradients that module describes); at the end every layer is stored back in its format. The other
parameters (norms, embeddings, head) stay frozen.
"""

from __future__ import annotations

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_unflatten

from ..errors import SLMError
from ..formats import get_format, qat_formats
from ..runtime import computes_on_cpu, dense_twin, quantized_modules


class FakeQuantLinear(nn.Module):
    """A linear layer that trains its float weight through a fake quantizer."""

    def __init__(self, layer: nn.Linear, format_name: str, bits: int, group_size: int):
        super().__init__()
        self.weight = layer.weight
        if "bias" in layer:
            self.bias = layer.bias
        self.format_name, self.bits, self.group_size = format_name, bits, group_size

    def quantized_weight(self) -> mx.array:
        return get_format(self.format_name).fake(self.weight, self.bits, self.group_size)

    def __call__(self, x):
        w = self.weight + mx.stop_gradient(self.quantized_weight() - self.weight)
        out = x @ w.T
        return out + self.bias if "bias" in self else out


class QuantizedTraining:
    """Swap a quantized student's quantized layers for trainable twins (``attach``), store them back
    (``detach``): every linear layer and the embedding (whose twin is also the tied output head).
    With a ``reference`` (the float model the student was quantized from, e.g. the teacher), each
    twin's latent weights start from the reference's weight at the same path where that rounds to
    the stored codes (:meth:`mlx_slm.quant.fake_quant.Twin.adopt`; other shapes are ignored).

    On a CPU the quantized layers without a twin compute meanwhile with frozen float32 dense
    twins (:func:`mlx_slm.runtime.dense_twin`): the same values, on a fast GEMM instead of
    scalar ``quantized_matmul``.
    """

    def __init__(self, model: nn.Module, reference: nn.Module | None = None):
        from ..quant.fake_quant import make_twin, reference_weights

        self.model = model
        floats = reference_weights(reference)
        self.layers = [(path, module, twin) for path, module in quantized_modules(model)
                       if (twin := make_twin(module, floats.get(path))) is not None]
        if not any(".layers." in f".{path}" for path, _, _ in self.layers):
            raise SLMError("train_quantized needs a quantized student (affine, lut or ternary decoder layers); "
                           "quantize it first, e.g. with method gptq or blockwise")
        trained = {path for path, _, _ in self.layers}
        self.others = ([(path, module, dense_twin(module)) for path, module in quantized_modules(model)
                        if path not in trained] if computes_on_cpu() else [])

    def attach(self) -> QuantizedTraining:
        self.model.freeze()
        self.model.update_modules(tree_unflatten([(path, twin) for path, _, twin in self.layers + self.others]))
        for _, _, twin in self.others:
            twin.freeze()
        for _, _, twin in self.layers:
            twin.unfreeze()
            if "bias" in twin:
                twin.freeze(keys=["bias"])
        return self

    def detach(self) -> None:
        from ..quant.fake_quant import store_twin

        for _, module, twin in self.layers:
            store_twin(module, twin)
        self.model.update_modules(tree_unflatten([(path, module) for path, module, _ in self.layers + self.others]))
        self.model.unfreeze()
        for _, module in quantized_modules(self.model):
            module.freeze()  # quantized layers keep their arrays frozen, as mlx-lm builds them


def check_qat(qat: dict) -> tuple[str, int, int]:
    format_name = qat.get("format", "affine")
    if format_name not in qat_formats():
        raise SLMError(f"quantization-aware training supports formats {qat_formats()}, not {format_name!r}")
    row = get_format(format_name)
    bits = int(qat.get("bits", row.default_bits))
    group_size = int(qat.get("group_size", row.default_group_size))
    return format_name, bits, group_size


def add_fake_quant(model: nn.Module, qat: dict) -> list[str]:
    """Swap the decoder's ``nn.Linear`` layers whose width fits the group for fake-quantized ones."""
    format_name, bits, group_size = check_qat(qat)
    swaps = [(path, FakeQuantLinear(module, format_name, bits, group_size)) for path, module in model.named_modules()
             if type(module) is nn.Linear and ".layers." in f".{path}"
             and module.weight.shape[1] % (group_size or module.weight.shape[1]) == 0]
    if not swaps:
        raise SLMError("no linear layer of the student fits the quantization-aware training settings")
    model.update_modules(tree_unflatten(swaps))
    return [path for path, _ in swaps]


def remove_fake_quant(model: nn.Module) -> None:
    """Put plain ``nn.Linear`` layers holding the trained float weights back."""
    swaps = []
    for path, module in model.named_modules():
        if isinstance(module, FakeQuantLinear):
            out_dims, in_dims = module.weight.shape
            plain = nn.Linear(in_dims, out_dims, bias="bias" in module)
            plain.update(module.parameters())
            swaps.append((path, plain))
    model.update_modules(tree_unflatten(swaps))
