"""The Metal matrix-vector kernels (kernels/*.metal), run by the CPU emulator against numpy.

The emulator sums each lane's partial in the order the kernel documents (lane l
takes chunks of 32 weights l, l+32, ... and accumulates in float32) and adds the
32 lane partials in lane order, so a numpy function doing the same float32
operations in the same order must give the same bits; the result is also held to
plain ``x @ W.T`` with a stated tolerance, the only promise that holds on a GPU
(whose simd_sum adds lanes in its own order). On a Mac the same cases run on the GPU.
"""

import platform

import ml_dtypes
import numpy as np
import pytest

from mlx_slm.formats.affine import pack_codes
from mlx_slm.kernels import metal_source
from mlx_slm.kernels.emulator import EmulatedKernel, KernelCompileError, KernelFault
from mlx_slm.kernels.specs import KERNELS, launch_shape, lut_template, ternary_template

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}  # relative to max |x @ W.T|


def emulated(name: str, source: str | None = None) -> EmulatedKernel:
    inputs, outputs = KERNELS[name]
    return EmulatedKernel(name, inputs, outputs, source or metal_source(name))


def run(kernel, inputs, template, out_rows, dtype):
    grid, threadgroup = launch_shape(out_rows)
    return kernel(inputs=inputs, template=template, grid=grid, threadgroup=threadgroup,
                  output_shapes=[(inputs[0].shape[0], out_rows)], output_dtypes=[dtype])[0]


def simd_sum_in_lane_order(lanes):
    """lanes [32, ...] float32 -> their float32 sum, lane 0 first (the emulator's simd_sum)."""
    total = lanes[0]
    for lane in range(1, 32):
        total = total + lanes[lane]
    return total


def lut_reference(x, codes, lut, scales, group):
    """(float32 [M, N] in the kernel's operation order, float32 x @ W.T)."""
    rows, width = codes.shape
    table = lut.astype(np.float32)[np.arange(rows) // group]  # [N, 2^b]
    weights = np.take_along_axis(table, codes.astype(np.int64), axis=1)  # [N, K]
    xf = x.astype(np.float32)
    lanes = np.zeros((32, x.shape[0], rows), np.float32)
    for chunk in range(width // 32):  # each product goes straight onto the lane's running partial
        for i in range(chunk * 32, chunk * 32 + 32):
            lanes[chunk % 32] = lanes[chunk % 32] + weights[None, :, i] * xf[:, i, None]
    ordered = simd_sum_in_lane_order(lanes)
    row_scale = np.float32(1) if scales is None else scales.astype(np.float32)[:, 0]
    return ordered * row_scale, xf @ (weights * row_scale[..., None] if scales is not None else weights).T


def ternary_reference(x, codes, scales):
    """(float32 [M, N] in the kernel's operation order, float32 x @ W.T)."""
    rows, width = codes.shape
    trits = codes.astype(np.float32) - 1
    group = width // scales.shape[1]
    xf = x.astype(np.float32)
    lanes = np.zeros((32, x.shape[0], rows), np.float32)
    for chunk in range(width // 32):  # a chunk's sum of t * x, times its scale, onto the lane's partial
        part = np.zeros((x.shape[0], rows), np.float32)
        for i in range(chunk * 32, chunk * 32 + 32):
            part = part + trits[None, :, i] * xf[:, i, None]
        lanes[chunk % 32] = lanes[chunk % 32] + scales.astype(np.float32)[None, :, chunk * 32 // group] * part
    dense = trits * np.repeat(scales.astype(np.float32), group, axis=1)
    return simd_sum_in_lane_order(lanes), xf @ dense.T


def check(out, ordered, plain, dtype_name):
    dtype = DTYPES[dtype_name]
    np.testing.assert_array_equal(out.view(np.uint8), ordered.astype(dtype).view(np.uint8))
    scale = np.abs(plain).max()
    np.testing.assert_allclose(out.astype(np.float32), plain, rtol=0, atol=TOLERANCE[dtype_name] * scale)


LUT_CASES = [  # (M, N, K, bits, group, per-row scale)
    (1, 37, 96, 4, 1, False), (3, 40, 1056, 3, 8, True), (8, 21, 64, 2, 3, False),
    (2, 9, 2048, 4, 9, True), (5, 64, 160, 3, 4, False), (1, 7, 32, 2, 7, True),
]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m,rows,width,bits,group,with_scale", LUT_CASES)
def test_lut_kernel_matches_numpy(m, rows, width, bits, group, with_scale, dtype_name):
    rng = np.random.default_rng(rows * width + bits)
    codes = rng.integers(0, 1 << bits, (rows, width), dtype=np.uint8)
    lut = rng.standard_normal((rows // group, 1 << bits)).astype(np.float16)
    scales = rng.uniform(0.5, 2, (rows, 1)).astype(np.float16) if with_scale else None
    x = rng.standard_normal((m, width)).astype(DTYPES[dtype_name])
    dtype = DTYPES[dtype_name]
    inputs = [x, pack_codes(codes, bits), lut, scales if with_scale else np.ones((1, 1), np.float16)]
    out = run(emulated("lut_matvec"), inputs, lut_template(dtype, bits, group, with_scale), rows, dtype)
    check(out, *lut_reference(x, codes, lut, scales, group), dtype_name)


TERNARY_CASES = [(1, 37, 96, 0), (4, 50, 1024, 64), (8, 13, 2080, 32), (3, 4, 32, 0)]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("m,rows,width,group", TERNARY_CASES)
def test_ternary_kernel_matches_numpy(m, rows, width, group, dtype_name):
    rng = np.random.default_rng(rows + width)
    codes = rng.integers(0, 3, (rows, width), dtype=np.uint8)
    groups = 1 if group == 0 else width // group
    scales = rng.uniform(0.01, 0.1, (rows, groups)).astype(np.float16)
    dtype = DTYPES[dtype_name]
    x = rng.standard_normal((m, width)).astype(dtype)
    out = run(emulated("ternary_matvec"), [x, pack_codes(codes, 2), scales], ternary_template(dtype, width, groups),
              rows, dtype)
    check(out, *ternary_reference(x, codes, scales), dtype_name)


def broken(name: str, old: str, new: str) -> EmulatedKernel:
    source = metal_source(name)
    assert old in source
    return emulated(name, source.replace(old, new))


def ternary_inputs(rng, m=2, rows=9, width=128):
    codes = rng.integers(0, 3, (rows, width), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, (rows, 1)).astype(np.float16)
    x = rng.standard_normal((m, width)).astype(np.float32)
    return [x, pack_codes(codes, 2), scales], ternary_template(np.float32, width, 1), codes


def test_emulator_reports_an_out_of_bounds_write_in_a_broken_kernel():
    inputs, template, _ = ternary_inputs(np.random.default_rng(0))
    kernel = broken("ternary_matvec", "out[m * N + row] = static_cast<T>(total);",
                    "out[m * N + row + 1] = static_cast<T>(total);")  # off by one: the last row writes past the end
    with pytest.raises(KernelFault, match="out-of-bounds write.*'out'"):
        run(kernel, inputs, template, 9, np.float32)


def test_emulator_reports_a_missing_barrier():
    """A variant that reduces through threadgroup memory: without the barrier, lane 0 reads
    partials other lanes have not written yet."""
    inputs, template, codes = ternary_inputs(np.random.default_rng(1))
    reduce_with_memory = """threadgroup float partials[4][32];
  partials[simdgroup_index_in_threadgroup][lane] = acc[m];
  BARRIER
  if (lane == 0) {
    float total = 0.0f;
    for (int l = 0; l < 32; ++l) total += partials[simdgroup_index_in_threadgroup][l];
    out[m * N + row] = static_cast<T>(total);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);"""
    old = """const float total = simd_sum(acc[m]);
  if (lane == 0) {
    out[m * N + row] = static_cast<T>(total);
  }"""
    good = broken("ternary_matvec", old, reduce_with_memory.replace(
        "BARRIER", "threadgroup_barrier(mem_flags::mem_threadgroup);"))
    out = run(good, inputs, template, 9, np.float32)
    np.testing.assert_allclose(out, ternary_reference(inputs[0], codes, inputs[2])[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(KernelFault, match="race|missing threadgroup_barrier"):
        run(broken("ternary_matvec", old, reduce_with_memory.replace("BARRIER", "")), inputs, template, 9,
            np.float32)


def lut_inputs(rng, rows=7, width=64, bits=2):
    codes = rng.integers(0, 1 << bits, (rows, width), dtype=np.uint8)
    lut = rng.standard_normal((1, 1 << bits)).astype(np.float16)  # 4 entries: MLX passes it as constant
    x = rng.standard_normal((2, width)).astype(np.float32)
    return [x, pack_codes(codes, bits), lut, np.ones((1, 1), np.float16)], lut_template(np.float32, bits, rows, False)


def test_a_small_input_aliased_as_device_does_not_compile():
    """The kernels index their inputs: a `const device` alias of a 4-entry lut (constant in MLX) or of
    4 ternary scales is what the Metal compiler rejected, and so does the emulator."""
    inputs, template = lut_inputs(np.random.default_rng(3))
    aliased = broken("lut_matvec", "table[e] = float(lut[palette + e]);",
                     "const device half* p = lut + palette;\n  table[e] = float(p[e]);")
    with pytest.raises(KernelCompileError, match="address space"):
        run(aliased, inputs, template, 7, np.float32)
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 3, (4, 32), dtype=np.uint8)
    tinputs = [rng.standard_normal((1, 32)).astype(np.float32), pack_codes(codes, 2),
               rng.uniform(0.01, 0.1, (4, 1)).astype(np.float16)]
    indexed = "const float scale = float(scales[row_scales + (chunk * 32) / GROUP]);"
    alias = "const device half* s = scales + row_scales;\n  const float scale = float(s[(chunk * 32) / GROUP]);"
    aliased = broken("ternary_matvec", indexed, alias)
    with pytest.raises(KernelCompileError, match="address space"):
        run(aliased, tinputs, ternary_template(np.float32, 32, 1), 4, np.float32)


def test_emulator_reports_a_private_array_overrun():
    """Reading the code word one past `words` (the last word's spill) is caught at the read."""
    inputs, template = lut_inputs(np.random.default_rng(5), bits=3)
    overrun = broken("lut_matvec", "code |= words[word + 1]", "code |= words[BITS]")
    with pytest.raises(KernelFault, match=r"index 3 out of bounds of array 'words\[BITS\]' \(source:\d+\)"):
        run(overrun, inputs, lut_template(np.float32, 3, 7, False), 7, np.float32)


def test_a_wrong_lane_reduction_gives_a_wrong_answer():
    """Replace simd_sum by a shuffle-down tree that starts at distance 8: lanes 16-31 are lost."""
    inputs, template, codes = ternary_inputs(np.random.default_rng(2), width=1024 + 32 * 20)
    tree = """float total = acc[m];
  for (ushort d = START; d > 0; d /= 2) total += simd_shuffle_down(total, d);"""
    old = "const float total = simd_sum(acc[m]);"
    want = ternary_reference(inputs[0], codes, inputs[2])[1]
    right = run(broken("ternary_matvec", old, tree.replace("START", "16")), inputs, template, 9, np.float32)
    np.testing.assert_allclose(right, want, rtol=1e-5, atol=1e-5)
    wrong = run(broken("ternary_matvec", old, tree.replace("START", "8")), inputs, template, 9, np.float32)
    assert np.abs(wrong - want).max() > 1e-2


@pytest.mark.skipif(platform.system() != "Darwin", reason="Metal kernels run on the GPU only on a Mac; "
                    "elsewhere the emulator tests above stand in for them")
@pytest.mark.mlx
@pytest.mark.parametrize("m,rows,width,bits,group,with_scale", LUT_CASES[:3])
def test_lut_kernel_on_the_gpu(m, rows, width, bits, group, with_scale):
    import mlx.core as mx

    from mlx_slm.kernels.ops import lut_matmul

    if not mx.metal.is_available():
        pytest.skip("no Metal device")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1 << bits, (rows, width), dtype=np.uint8)
    lut = rng.standard_normal((rows // group, 1 << bits)).astype(np.float16)
    scales = rng.uniform(0.5, 2, (rows, 1)).astype(np.float16) if with_scale else None
    x = rng.standard_normal((m, width)).astype(np.float16)
    with mx.stream(mx.gpu):
        out = lut_matmul(mx.array(x), mx.array(pack_codes(codes, bits)), mx.array(lut),
                         None if scales is None else mx.array(scales), bits, group)
    plain = lut_reference(x, codes, lut, scales, group)[1]
    np.testing.assert_allclose(np.array(out.astype(mx.float32)), plain, rtol=0, atol=2e-3 * np.abs(plain).max())
