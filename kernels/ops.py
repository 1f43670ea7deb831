"""Matrix products with ``lut`` and ``ternary`` weights in MLX.

On a Metal GPU, decode-sized inputs (at most :data:`MAX_KERNEL_ROWS` rows of
activations) run the matrix-vector kernels in ``lut_matvec.metal`` and
``ternary_matvec.metal``; anything else dequantizes the weight with MLX ops and
uses MLX's matmul. The kernels get their gradient with respect to the
activations from :func:`mlx.core.custom_function`, so LoRA and quantization-aware
training can run on top of them.

Layouts (see :mod:`mlx_slm.formats.lut` and :mod:`mlx_slm.formats.ternary`):

- lut: ``weight`` uint32 [N, K*bits/32] (one little-endian bit stream of codes per
  row), ``lut`` float16 [N/group_size, 2**bits] (row n uses palette n // group_size),
  optional ``scales`` float16 [N, 1]: ``w[n, k] = scales[n] * lut[n // g, code[n, k]]``.
- ternary: ``weight`` uint32 [N, K/16] (2-bit codes c = t + 1), ``scales`` float16
  [N, K/group_size] (group_size 0: one scale per row): ``w[n, k] = scales[n, k // gs] * (c - 1)``.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx
import numpy as np

from . import metal_source
from .specs import KERNELS, MAX_X_ROWS, launch_shape, lut_template, ternary_template

MAX_KERNEL_ROWS = MAX_X_ROWS


def unpack_codes(weight: mx.array, bits: int) -> mx.array:
    """uint32 [N, W] bit streams -> uint32 codes [N, W*32/bits] (code i at bits i*bits.. of the stream)."""
    rows, words = weight.shape
    count = words * 32 // bits
    offsets = np.arange(count, dtype=np.int64) * bits
    first = offsets // 32
    shift = (offsets % 32).astype(np.uint32)
    spill = shift + bits > 32
    low = weight[:, mx.array(first)] >> mx.array(shift)
    if spill.any():
        nxt = mx.array(np.minimum(first + 1, words - 1))
        high = weight[:, nxt] << mx.array(np.where(spill, 32 - shift, 0).astype(np.uint32))
        low = mx.where(mx.array(spill), low | high, low)
    return low & mx.array((1 << bits) - 1, dtype=mx.uint32)


def dequantize_lut(weight: mx.array, lut: mx.array, scales: mx.array | None, bits: int, group_size: int,
                   dtype=mx.float32) -> mx.array:
    """The dense [N, K] weight of a lut layer, in ``dtype``."""
    codes = unpack_codes(weight, bits)
    rows = codes.shape[0]
    palettes = mx.repeat(lut.astype(dtype), group_size, axis=0) if group_size > 1 else lut.astype(dtype)
    dense = mx.take_along_axis(palettes, codes.astype(mx.int32), axis=1) if rows else codes.astype(dtype)
    return dense if scales is None else dense * scales.astype(dtype)


def dequantize_ternary(weight: mx.array, scales: mx.array, group_size: int, dtype=mx.float32) -> mx.array:
    """The dense [N, K] weight of a ternary layer, in ``dtype`` (group_size 0: per-row scale)."""
    trits = unpack_codes(weight, 2).astype(dtype) - 1
    rows, width = trits.shape
    group = group_size or width
    grouped = trits.reshape(rows, width // group, group) * scales.astype(dtype)[..., None]
    return grouped.reshape(rows, width)


def metal_ready(rows: int, width: int) -> bool:
    """True when ``rows`` activation rows of ``width`` (a multiple of 32) should run our Metal kernel."""
    return (0 < rows <= MAX_KERNEL_ROWS and width % 32 == 0 and mx.metal.is_available()
            and mx.default_device() == mx.gpu)


@cache
def kernel(name: str):
    """The compiled ``mx.fast.metal_kernel`` for ``kernels/<name>.metal``."""
    inputs, outputs = KERNELS[name]
    return mx.fast.metal_kernel(name=name, input_names=inputs, output_names=outputs, source=metal_source(name))


def run_kernel(name: str, inputs: list, template: list, out_rows: int) -> mx.array:
    """Run ``name`` on the GPU: out [M, N] in the activations' dtype."""
    x = inputs[0]
    grid, threadgroup = launch_shape(out_rows, x.shape[0])
    return kernel(name)(inputs=inputs, template=template, grid=grid, threadgroup=threadgroup,
                        output_shapes=[(x.shape[0], out_rows)], output_dtypes=[x.dtype])[0]


def with_input_gradient(forward, dense):
    """Wrap ``forward(x, *stored)`` so that d/dx = cotangent @ dense(*stored); stored arrays get zeros."""

    @mx.custom_function
    def product(x, *stored):
        return forward(x, *stored)

    @product.vjp
    def product_vjp(primals, cotangent, output):
        x, *stored = primals
        grad_x = (cotangent @ dense(*stored).astype(cotangent.dtype)).astype(x.dtype)
        return (grad_x, *[mx.zeros_like(a) for a in stored])

    return product


@cache
def lut_product(bits: int, group_size: int, has_scale: bool):
    """The kernel call for one lut setting, with its activation gradient (built once per setting)."""

    def forward(flat, weight, lut, *maybe_scales):
        scales = maybe_scales[0] if maybe_scales else mx.ones((1, 1), mx.float16)  # read only with HAS_SCALE
        template = lut_template(flat.dtype, flat.shape[0], bits, group_size, has_scale)
        return run_kernel("lut_matvec", [flat, weight, lut, scales], template, weight.shape[0])

    def dense(weight, lut, *maybe_scales):
        return dequantize_lut(weight, lut, maybe_scales[0] if maybe_scales else None, bits, group_size)

    return with_input_gradient(forward, dense)


@cache
def ternary_product(group_size: int):
    """The kernel call for one ternary setting, with its activation gradient (built once per setting)."""

    def forward(flat, weight, scales):
        template = ternary_template(flat.dtype, flat.shape[0], flat.shape[-1], scales.shape[1])
        return run_kernel("ternary_matvec", [flat, weight, scales], template, weight.shape[0])

    def dense(weight, scales):
        return dequantize_ternary(weight, scales, group_size)

    return with_input_gradient(forward, dense)


def lut_matmul(x: mx.array, weight: mx.array, lut: mx.array, scales: mx.array | None, bits: int,
               group_size: int) -> mx.array:
    """``x @ W.T`` for a lut weight W [N, K]: x [..., K] -> [..., N] in x's dtype."""
    flat = x.reshape(-1, x.shape[-1])
    if not metal_ready(*flat.shape):
        dense = dequantize_lut(weight, lut, scales, bits, group_size, mx.float32)
        return (x.astype(mx.float32) @ dense.T).astype(x.dtype)
    stored = (weight, lut) if scales is None else (weight, lut, scales)
    out = lut_product(bits, group_size, scales is not None)(flat, *stored)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def ternary_matmul(x: mx.array, weight: mx.array, scales: mx.array, group_size: int) -> mx.array:
    """``x @ W.T`` for a ternary weight W [N, K] (group_size 0: per-row scale): x [..., K] -> [..., N]."""
    flat = x.reshape(-1, x.shape[-1])
    if not metal_ready(*flat.shape):
        dense = dequantize_ternary(weight, scales, group_size, mx.float32)
        return (x.astype(mx.float32) @ dense.T).astype(x.dtype)
    return ternary_product(group_size)(flat, weight, scales).reshape(*x.shape[:-1], weight.shape[0])
