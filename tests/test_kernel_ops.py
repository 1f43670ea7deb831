"""MLX ops of the lut / ternary matmuls (kernels/ops.py) against numpy, on the CPU backend."""

import numpy as np
import pytest

from mlx_slm.formats.affine import pack_codes

pytestmark = pytest.mark.mlx


def lut_case(rng, rows, width, bits, group, with_scale):
    codes = rng.integers(0, 1 << bits, (rows, width), dtype=np.uint8)
    lut = rng.standard_normal((rows // group, 1 << bits)).astype(np.float16)
    scales = rng.uniform(0.5, 2, (rows, 1)).astype(np.float16) if with_scale else None
    dense = lut.astype(np.float32)[np.arange(rows)[:, None] // group, codes]
    if with_scale:
        dense = dense * scales.astype(np.float32)
    return pack_codes(codes, bits), lut, scales, dense


def ternary_case(rng, rows, width, group):
    codes = rng.integers(0, 3, (rows, width), dtype=np.uint8)
    groups = 1 if group == 0 else width // group
    scales = rng.uniform(0.01, 0.1, (rows, groups)).astype(np.float16)
    dense = (codes.astype(np.float32) - 1) * np.repeat(scales.astype(np.float32), width // groups, axis=1)
    return pack_codes(codes, 2), scales, dense


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group,with_scale", [(1, False), (4, True), (8, False)])
def test_dequantize_lut_is_exact(bits, group, with_scale):
    import mlx.core as mx

    from mlx_slm.kernels.ops import dequantize_lut

    rng = np.random.default_rng(bits * 10 + group)
    packed, lut, scales, dense = lut_case(rng, 24, 96, bits, group, with_scale)
    got = dequantize_lut(mx.array(packed), mx.array(lut), None if scales is None else mx.array(scales), bits, group)
    np.testing.assert_array_equal(np.array(got), dense)


@pytest.mark.parametrize("group", [0, 32, 64])
def test_dequantize_ternary_is_exact(group):
    import mlx.core as mx

    from mlx_slm.kernels.ops import dequantize_ternary

    packed, scales, dense = ternary_case(np.random.default_rng(group), 12, 128, group)
    np.testing.assert_array_equal(np.array(dequantize_ternary(mx.array(packed), mx.array(scales), group)), dense)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_matmuls_follow_the_activation_dtype(dtype):
    import mlx.core as mx

    from mlx_slm.kernels.ops import lut_matmul, ternary_matmul

    rng = np.random.default_rng(0)
    packed, lut, scales, dense = lut_case(rng, 16, 64, 3, 2, True)
    tpacked, tscales, tdense = ternary_case(rng, 16, 64, 32)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    xm = mx.array(x).astype(getattr(mx, dtype))
    x_rounded = np.array(xm.astype(mx.float32))
    out = lut_matmul(xm, mx.array(packed), mx.array(lut), mx.array(scales), 3, 2)
    tout = ternary_matmul(xm, mx.array(tpacked), mx.array(tscales), 32)
    assert out.dtype == xm.dtype and out.shape == (2, 3, 16) and tout.shape == (2, 3, 16)
    tolerance = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype]
    for got, weight in ((out, dense), (tout, tdense)):
        want = x_rounded @ weight.T
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, rtol=tolerance,
                                   atol=tolerance * np.abs(want).max())


def test_kernel_gradient_is_the_dense_gradient():
    """The custom VJP the Metal path uses gives d/dx = cotangent @ W, the autodiff answer."""
    import mlx.core as mx

    from mlx_slm.kernels.ops import dequantize_lut, with_input_gradient

    rng = np.random.default_rng(1)
    packed, lut, _, dense = lut_case(rng, 8, 32, 4, 1, False)
    stored = (mx.array(packed), mx.array(lut))

    def dense_weight(weight, table):
        return dequantize_lut(weight, table, None, 4, 1)

    def forward(x, weight, table):  # stands in for the kernel: any function of the same value
        return mx.stop_gradient(x @ dense_weight(weight, table).T)

    product = with_input_gradient(forward, dense_weight)
    x = mx.array(rng.standard_normal((3, 32)).astype(np.float32))
    cotangent = rng.standard_normal((3, 8)).astype(np.float32)
    grad = mx.grad(lambda x: (product(x, *stored) * mx.array(cotangent)).sum())(x)
    np.testing.assert_allclose(np.array(grad), cotangent @ dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(product(x, *stored)), np.array(x) @ dense.T, rtol=1e-5, atol=1e-5)
