"""Trainable twins of quantized layers: float weights seen through the format's exact rounding.

A twin replaces one quantized linear layer (affine ``QuantizedLinear``, ``LutLinear``,
``TernaryLinear``/``TernaryB3Linear``) while it trains. It holds a float32 weight
``w`` [N, K] and the format's float parameters, and computes ``x @ fake(w).T`` where
``fake`` rounds exactly as the stored format does:

- affine: ``q = clip(round((w - b) / s), 0, 2**bits - 1)``, ``fake = s * q + b`` per
  group of ``group_size`` input columns (MLX's ``w = scales * q + biases``);
- ternary: ``q = clip(round(w / s), -1, 1)``, ``fake = s * q`` per group (0: per row);
- lut: ``q = argmin_j |w - P_j|`` over the row's palette ``P``, ``fake = r * P_q``
  with ``r`` the optional float16 row scale (``w`` holds the weight divided by ``r``).

The latent weights get gradients straight through the rounding (STE) wherever they
are inside the format's range, and nothing where they are clipped. The format's
parameters get the gradient of the value the layer computes with its codes held: a
scale's is its code, a bias's 1, a palette entry's the sum over the weights that chose
it. (LSQ's step-size gradient, code minus ``(w - b) / s``, treats the rounding as the
identity too; from gptq's codes it raised a block's training error at 2 and 4 bits,
where the gradient with the codes held lowered it at 2 bits and raised it far less at
4; for ternary it lowered the error less.) The
format's float parameters are seen rounded to their stored dtype (float16), also
straight through, so the values trained are the values saved: :meth:`Twin.stored`
returns exactly the arrays of the quantized layer that computes ``fake(w)``.

Every array is held divided by ``unit``, a power of two near the layer's mean step
size, so an Adam learning rate is relative to the layer's scale and multiplying back
is exact. A twin made from a layer reproduces that layer's codes and values exactly.

Given the float weight the layer was quantized from (:func:`make_twin`'s ``weight``), a
twin's latent weights start at it wherever it rounds to the stored code, and at the
code's value elsewhere (where a start like gptq chose another code): the codes and the
forward pass are still exactly the layer's, but a weight near the edge of its code's
interval is near it in training too, instead of half a step away at the code's centre.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
from mlx import nn

from ..formats.affine import pack_codes
from ..formats.ternary import pack_base3
from ..layers import EmbeddingMixin, LutLinear, TernaryB3Linear, TernaryLinear
from ..runtime import dequantized_float32

QUANT_PARAMS = ("scales", "biases", "lut")  # trained with the quantization-parameter rate


def power_of_two(value: float) -> float:
    return 2.0 ** round(math.log2(value)) if value > 0 and math.isfinite(value) else 1.0


def with_latent_gradient(value: mx.array, weight: mx.array, inside: mx.array) -> mx.array:
    """``value`` forward (exactly); backward, ``weight`` gets the incoming gradient where ``inside``."""
    return value + mx.where(inside, weight - mx.stop_gradient(weight), 0.0)


def cast_ste(x: mx.array, dtype) -> mx.array:
    """x rounded to ``dtype`` (and back to float32) forward, identity backward."""
    return x + mx.stop_gradient(x.astype(dtype).astype(mx.float32) - x)


def safe_divisor(s: mx.array) -> mx.array:
    return mx.where(s == 0, mx.array(1.0, s.dtype), s)


class Twin(nn.Module):
    """Base class. ``weight`` (w / unit) and the format's parameters train; ``bias`` is frozen."""

    def __init__(self, layer, unit: float):
        super().__init__()
        self.unit, self.bits, self.group_size = unit, layer.bits, layer.group_size
        self.stored_dtype = layer["scales"].dtype if "scales" in layer else layer["lut"].dtype
        if "bias" in layer:
            self.bias = layer["bias"].astype(mx.float32)
            self.freeze(keys=["bias"])

    def __call__(self, x: mx.array) -> mx.array:
        out = x @ self.fake().T
        return out + self["bias"] if "bias" in self else out

    def stored_param(self, name: str) -> mx.array:
        """A format parameter in real units, rounded to its stored dtype (straight through)."""
        return cast_ste(self[name] * self.unit, self.stored_dtype)

    def fake(self) -> mx.array:
        """The dense weight [N, K] float32 that the saved layer computes with."""
        raise NotImplementedError

    def codes(self) -> np.ndarray:
        """Integer codes [N, K] (uint8) of the current parameters."""
        raise NotImplementedError

    def stored(self) -> dict:
        """suffix -> MLX array of the quantized layer computing :meth:`fake` (``bias`` excluded)."""
        raise NotImplementedError

    def latent(self, weight: mx.array) -> mx.array:
        """The latent weight (what :attr:`weight` holds) of a float weight [N, K]."""
        return weight.astype(mx.float32) / self.unit

    def adopt(self, weight: mx.array) -> float:
        """Latent weights from the float ``weight`` [N, K] wherever it rounds to the current code (the
        codes stay as they are); returns the share of weights adopted (0 for a weight of another shape)."""
        if tuple(weight.shape) != tuple(self.weight.shape):
            return 0.0
        codes, kept = self.codes(), self.weight
        self.weight = self.latent(weight)
        same = self.codes() == codes
        self.weight = mx.where(mx.array(same), self.weight, kept)
        return float(same.mean())


class AffineTwin(Twin):
    def __init__(self, layer: nn.QuantizedLinear):
        unit = power_of_two(mx.abs(layer.scales.astype(mx.float32)).mean().item())
        super().__init__(layer, unit)
        self.weight = dequantized_float32(layer) / unit
        self.scales = layer.scales.astype(mx.float32) / unit
        self.biases = layer.biases.astype(mx.float32) / unit

    def grouped(self):
        rows, width = self.weight.shape
        w = (self.weight * self.unit).reshape(rows, width // self.group_size, self.group_size)
        return w, self.stored_param("scales")[..., None], self.stored_param("biases")[..., None]

    def positions(self):
        """(w, s, b, u, q) per group: weights, scales, biases, each weight's position ``u = (w - b) / s``
        in steps (no gradient) and its code ``q = clip(round(u), 0, 2**bits - 1)``."""
        w, s, b = self.grouped()
        u = mx.stop_gradient((w - b) / safe_divisor(s))
        return w, s, b, u, mx.clip(mx.round(u), 0, (1 << self.bits) - 1)

    def fake(self):
        w, s, b, u, q = self.positions()
        top = (1 << self.bits) - 1
        return with_latent_gradient(s * q + b, w, (u > -0.5) & (u < top + 0.5)).reshape(self.weight.shape)

    def codes(self):
        q = self.positions()[-1]
        return np.array(q.reshape(self.weight.shape)).astype(np.uint8)

    def stored(self):
        return {"weight": mx.array(pack_codes(self.codes(), self.bits)),
                "scales": (self.scales * self.unit).astype(self.stored_dtype),
                "biases": (self.biases * self.unit).astype(self.stored_dtype)}


class TernaryTwin(Twin):
    def __init__(self, layer: TernaryLinear):
        unit = power_of_two(mx.abs(layer["scales"].astype(mx.float32)).mean().item())
        super().__init__(layer, unit)
        self.base3 = isinstance(layer, TernaryB3Linear)
        self.weight = layer.dense_weight() / unit
        self.scales = layer["scales"].astype(mx.float32) / unit

    def grouped(self):
        rows, width = self.weight.shape
        group = self.group_size or width
        w = (self.weight * self.unit).reshape(rows, width // group, group)
        return w, self.stored_param("scales")[..., None]

    def positions(self):
        """(w, s, u, q) per group: weights, scales, each weight's position ``u = w / s`` in steps (no
        gradient) and its trit ``q = clip(round(u), -1, 1)``."""
        w, s = self.grouped()
        u = mx.stop_gradient(w / safe_divisor(s))
        return w, s, u, mx.clip(mx.round(u), -1, 1)

    def fake(self):
        w, s, u, q = self.positions()
        return with_latent_gradient(s * q, w, mx.abs(u) < 1.5).reshape(self.weight.shape)

    def codes(self):
        trits = self.positions()[-1]
        return (np.array(trits.reshape(self.weight.shape)) + 1).astype(np.uint8)

    def stored(self):
        codes = self.codes()
        return {"weight": mx.array(pack_base3(codes) if self.base3 else pack_codes(codes, 2)),
                "scales": (self.scales * self.unit).astype(self.stored_dtype)}


class LutTwin(Twin):
    def __init__(self, layer: LutLinear):
        has_scales = "scales" in layer
        unit = power_of_two(mx.abs(layer["lut"].astype(mx.float32)).mean().item())
        super().__init__(layer, unit)
        dense = layer.dense_weight()
        self.lut = layer["lut"].astype(mx.float32) / unit
        if has_scales:
            rows = layer["scales"].astype(mx.float32)
            self.row_unit = power_of_two(mx.abs(rows).mean().item())
            self.scales = rows / self.row_unit
            dense = dense / safe_divisor(rows)
        self.weight = dense / unit

    def latent(self, weight):
        weight = weight.astype(mx.float32)
        if "scales" in self:
            weight = weight / safe_divisor(self["scales"] * self.row_unit)
        return weight / self.unit

    def row_scales(self):
        return cast_ste(self["scales"] * self.row_unit, self.stored_dtype) if "scales" in self else None

    def palettes(self) -> mx.array:
        """[N, 2**bits]: each row's palette, in units of ``unit``, rounded to the stored dtype."""
        lut = cast_ste(self.lut * self.unit, self.stored_dtype) / self.unit
        return mx.repeat(lut, self.group_size, axis=0)

    def nearest(self, palettes: mx.array) -> mx.array:
        """[N, K] index of each latent weight's nearest entry of its row's palette [N, L]: its rank among
        the midpoints of the sorted palette, counted one midpoint at a time (uint8), so no [N, K, L]
        distance array is built (1.8 GB for a 4-bit embedding of 49152 x 576)."""
        weight, palettes = mx.stop_gradient(self.weight), mx.stop_gradient(palettes)
        order = mx.argsort(palettes, axis=1)
        ranked = mx.take_along_axis(palettes, order, axis=1)
        midpoints = (ranked[:, 1:] + ranked[:, :-1]) / 2
        rank = mx.zeros(weight.shape, mx.uint8)
        for j in range(midpoints.shape[1]):
            rank = rank + (weight > midpoints[:, j : j + 1]).astype(mx.uint8)
        return mx.take_along_axis(order, rank.astype(mx.uint32), axis=1)

    def fake(self):
        palettes = self.palettes()
        chosen = mx.take_along_axis(palettes, self.nearest(palettes), axis=1)
        dense = with_latent_gradient(chosen, self.weight, mx.array(True)) * self.unit
        scales = self.row_scales()
        return dense if scales is None else dense * scales

    def codes(self):
        return np.array(self.nearest(self.palettes())).astype(np.uint8)

    def stored(self):
        out = {"weight": mx.array(pack_codes(self.codes(), self.bits)),
               "lut": (self.lut * self.unit).astype(self.stored_dtype)}
        if "scales" in self:
            out["scales"] = (self.scales * self.row_unit).astype(self.stored_dtype)
        return out


class EmbeddingTwin(nn.Module):
    """The twin of a quantized embedding: the linear twin ``twin`` of its [V, D] table, looked up
    by token id (``__call__``) and used as the tied output head (``as_linear``), so both uses
    train the same weights and quantization parameters."""

    def __init__(self, twin: Twin):
        super().__init__()
        self.twin = twin

    def __call__(self, ids: mx.array) -> mx.array:
        return self.twin.fake()[ids]

    def as_linear(self, x: mx.array) -> mx.array:
        return self.twin(x)

    def codes(self) -> np.ndarray:
        return self.twin.codes()

    def stored(self) -> dict:
        return self.twin.stored()

    def adopt(self, weight: mx.array) -> float:
        return self.twin.adopt(weight)


def make_twin(layer, weight: mx.array | None = None) -> Twin | EmbeddingTwin | None:
    """The twin of a quantized linear or embedding layer, or None for a kind that does not train here.
    ``weight``: the float weight [N, K] the layer was quantized from, if known; the twin's latent
    weights start from it where it rounds to the stored codes (:meth:`Twin.adopt`)."""
    twin = None
    if isinstance(layer, nn.QuantizedEmbedding) and getattr(layer, "mode", "affine") == "affine":
        twin = EmbeddingTwin(AffineTwin(layer))
    elif isinstance(layer, EmbeddingMixin):
        twin = EmbeddingTwin(TernaryTwin(layer) if isinstance(layer, TernaryLinear) else LutTwin(layer))
    elif isinstance(layer, nn.QuantizedLinear) and getattr(layer, "mode", "affine") == "affine":
        twin = AffineTwin(layer)
    elif isinstance(layer, TernaryLinear):
        twin = TernaryTwin(layer)
    elif isinstance(layer, LutLinear):
        twin = LutTwin(layer)
    if twin is not None and weight is not None:
        twin.adopt(weight)
    return twin


def reference_weights(reference) -> dict:
    """Module path -> weight of every module of ``reference`` (the float model or block) holding one,
    {} for None: what :func:`make_twin` takes as each quantized layer's float weight."""
    return {} if reference is None else {path: m.weight for path, m in reference.named_modules() if "weight" in m}


def store_twin(layer, twin: Twin | EmbeddingTwin) -> None:
    """Write the twin's stored arrays into ``layer`` (the module it was made from)."""
    for name, value in twin.stored().items():
        setattr(layer, name, value)
