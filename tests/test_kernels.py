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
    grid, threadgroup = launch_shape(out_rows, dict(template)["M"])
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


LUT_CASES = [  # (M, N, K, bits, group, per-row scale, palette and scale dtype)
    (1, 37, 96, 4, 1, False, "float16"), (3, 40, 1056, 3, 8, True, "bfloat16"),
    (8, 21, 64, 2, 3, False, "float32"), (2, 9, 2048, 4, 9, True, "float16"),
    (5, 64, 160, 3, 4, False, "bfloat16"), (1, 7, 32, 2, 7, True, "float32"),
    (4, 24, 576, 4, 8, True, "bfloat16"), (6, 11, 128, 2, 1, False, "float16"),
    (7, 16, 64, 3, 2, True, "float32"),
]


def lut_case(m, rows, width, bits, group, with_scale, table_dtype, dtype_name):
    """(kernel inputs, template, codes, lut, scales or None) for one case in ``dtype_name`` activations."""
    rng = np.random.default_rng(rows * width + bits)
    codes = rng.integers(0, 1 << bits, (rows, width), dtype=np.uint8)
    lut = rng.standard_normal((rows // group, 1 << bits)).astype(DTYPES[table_dtype])
    scales = rng.uniform(0.5, 2, (rows, 1)).astype(DTYPES[table_dtype]) if with_scale else None
    dtype = DTYPES[dtype_name]
    x = rng.standard_normal((m, width)).astype(dtype)
    inputs = [x, pack_codes(codes, bits), lut, scales if with_scale else np.ones((1, 1), np.float16)]
    return inputs, lut_template(dtype, m, bits, group, with_scale), codes, lut, scales


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", LUT_CASES)
def test_lut_kernel_matches_numpy(case, dtype_name):
    inputs, template, codes, lut, scales = lut_case(*case, dtype_name)
    out = run(emulated("lut_matvec"), inputs, template, case[1], DTYPES[dtype_name])
    check(out, *lut_reference(inputs[0], codes, lut, scales, case[4]), dtype_name)


TERNARY_CASES = [  # (M, N, K, weights per scale (0: one per row), scale dtype)
    (1, 37, 96, 0, "float16"), (4, 50, 1024, 64, "bfloat16"), (8, 13, 2080, 32, "float32"),
    (3, 4, 32, 0, "float16"), (2, 9, 576, 64, "float32"), (5, 20, 192, 96, "bfloat16"),
    (6, 8, 64, 32, "float16"), (7, 5, 128, 0, "float32"),
]


def ternary_case(m, rows, width, group, scale_dtype, dtype_name):
    """(kernel inputs, template, codes) for one case in ``dtype_name`` activations."""
    rng = np.random.default_rng(rows + width)
    codes = rng.integers(0, 3, (rows, width), dtype=np.uint8)
    groups = 1 if group == 0 else width // group
    scales = rng.uniform(0.01, 0.1, (rows, groups)).astype(DTYPES[scale_dtype])
    dtype = DTYPES[dtype_name]
    x = rng.standard_normal((m, width)).astype(dtype)
    return [x, pack_codes(codes, 2), scales], ternary_template(dtype, m, width, groups), codes


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", TERNARY_CASES)
def test_ternary_kernel_matches_numpy(case, dtype_name):
    inputs, template, codes = ternary_case(*case, dtype_name)
    out = run(emulated("ternary_matvec"), inputs, template, case[1], DTYPES[dtype_name])
    check(out, *ternary_reference(inputs[0], codes, inputs[2]), dtype_name)


def broken(name: str, old: str, new: str) -> EmulatedKernel:
    source = metal_source(name)
    assert old in source
    return emulated(name, source.replace(old, new))


def ternary_inputs(rng, m=2, rows=9, width=128):
    codes = rng.integers(0, 3, (rows, width), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, (rows, 1)).astype(np.float16)
    x = rng.standard_normal((m, width)).astype(np.float32)
    return [x, pack_codes(codes, 2), scales], ternary_template(np.float32, m, width, 1), codes


def test_emulator_reports_an_out_of_bounds_write_in_a_broken_kernel():
    inputs, template, _ = ternary_inputs(np.random.default_rng(0))
    kernel = broken("ternary_matvec", "out[size_t(m) * N + first + r] = static_cast<T>(total);",
                    "out[size_t(m) * N + first + r + 1] = static_cast<T>(total);")  # the last row writes past the end
    with pytest.raises(KernelFault, match="out-of-bounds write.*'out'"):
        run(kernel, inputs, template, 9, np.float32)


def test_emulator_reports_a_missing_barrier():
    """A variant that reduces through threadgroup memory: without the barrier, lane 0 reads
    partials other lanes have not written yet."""
    inputs, template, codes = ternary_inputs(np.random.default_rng(1), rows=16)  # no simdgroup returns early
    reduce_with_memory = """threadgroup float partials[SIMDGROUPS][32];
    partials[simdgroup_index_in_threadgroup][lane] = acc[r][m];
    BARRIER
    if (lane == 0 && first + r < N) {
      float total = 0.0f;
      for (int l = 0; l < 32; ++l) total += partials[simdgroup_index_in_threadgroup][l];
      out[size_t(m) * N + first + r] = static_cast<T>(total);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);"""
    old = """const float total = simd_sum(acc[r][m]);
    if (lane == 0 && first + r < N) {
      out[size_t(m) * N + first + r] = static_cast<T>(total);
    }"""
    good = broken("ternary_matvec", old, reduce_with_memory.replace(
        "BARRIER", "threadgroup_barrier(mem_flags::mem_threadgroup);"))
    out = run(good, inputs, template, 16, np.float32)
    np.testing.assert_allclose(out, ternary_reference(inputs[0], codes, inputs[2])[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(KernelFault, match="race|missing threadgroup_barrier"):
        run(broken("ternary_matvec", old, reduce_with_memory.replace("BARRIER", "")), inputs, template, 16,
            np.float32)


def lut_inputs(rng, rows=7, width=64, bits=2):
    codes = rng.integers(0, 1 << bits, (rows, width), dtype=np.uint8)
    lut = rng.standard_normal((1, 1 << bits)).astype(np.float16)  # 4 entries: MLX passes it as constant
    x = rng.standard_normal((2, width)).astype(np.float32)
    inputs = [x, pack_codes(codes, bits), lut, np.ones((1, 1), np.float16)]
    return inputs, lut_template(np.float32, 2, bits, rows, False)


def test_a_small_input_aliased_as_device_does_not_compile():
    """The kernels index their inputs: a `const device` alias of a 4-entry lut (constant in MLX) or of
    4 ternary scales is what the Metal compiler rejected, and so does the emulator."""
    inputs, template = lut_inputs(np.random.default_rng(3))
    indexed = "palettes[own + r][i % ENTRIES] = float(lut[size_t(row / GROUP) * ENTRIES + i % ENTRIES]);"
    alias = ("const device half* p = lut + size_t(row / GROUP) * ENTRIES;\n"
             "  palettes[own + r][i % ENTRIES] = float(p[i % ENTRIES]);")
    aliased = broken("lut_matvec", indexed, alias)
    with pytest.raises(KernelCompileError, match="address space"):
        run(aliased, inputs, template, 7, np.float32)
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 3, (4, 32), dtype=np.uint8)
    tinputs = [rng.standard_normal((1, 32)).astype(np.float32), pack_codes(codes, 2),
               rng.uniform(0.01, 0.1, (4, 1)).astype(np.float16)]
    indexed = "const float scale = float(scales[at]);"
    alias = "const device half* s = scales + at;\n    const float scale = float(s[0]);"
    aliased = broken("ternary_matvec", indexed, alias)
    with pytest.raises(KernelCompileError, match="address space"):
        run(aliased, tinputs, ternary_template(np.float32, 1, 32, 1), 4, np.float32)


def test_emulator_reports_a_private_array_overrun():
    """Reading the code word one past `words` (the last word's spill) is caught at the read."""
    inputs, template = lut_inputs(np.random.default_rng(5), bits=3)
    overrun = broken("lut_matvec", "code |= words[r][word + 1]", "code |= words[r][BITS]")
    with pytest.raises(KernelFault, match=r"index 3 out of bounds of array 'words\[ROWS\]\[BITS\]' \(source:\d+\)"):
        run(overrun, inputs, lut_template(np.float32, 2, 3, 7, False), 7, np.float32)


def test_a_wrong_lane_reduction_gives_a_wrong_answer():
    """Replace simd_sum by a shuffle-down tree that starts at distance 8: lanes 16-31 are lost."""
    inputs, template, codes = ternary_inputs(np.random.default_rng(2), width=1024 + 32 * 20)
    tree = """float total = acc[r][m];
    for (ushort d = START; d > 0; d /= 2) total += simd_shuffle_down(total, d);"""
    old = "const float total = simd_sum(acc[r][m]);"
    want = ternary_reference(inputs[0], codes, inputs[2])[1]
    right = run(broken("ternary_matvec", old, tree.replace("START", "16")), inputs, template, 9, np.float32)
    np.testing.assert_allclose(right, want, rtol=1e-5, atol=1e-5)
    wrong = run(broken("ternary_matvec", old, tree.replace("START", "8")), inputs, template, 9, np.float32)
    assert np.abs(wrong - want).max() > 1e-2


# ---- in-kernel guards -------------------------------------------------------------
def bad_shapes(name, problem):
    """Inputs whose shapes disagree with the weight or the template: (inputs, template, out rows)."""
    rng = np.random.default_rng(6)
    if name == "ternary_matvec":
        inputs, template, _ = ternary_case(2, 9, 128, 32, "float16", "float32")
        if problem == "K":
            inputs[0] = rng.standard_normal((2, 160)).astype(np.float32)  # x wider than the weight
        else:
            inputs[2] = inputs[2][:, :2].copy()  # 2 scale groups where the template says 4
        return inputs, template, 9
    inputs, template, *_ = lut_case(4, 10, 96, 4, 2, True, "float16", "float32")
    if problem == "K":
        inputs[0] = rng.standard_normal((4, 128)).astype(np.float32)  # x wider than the weight
    elif problem == "M":
        inputs[0] = inputs[0][:2].copy()  # 2 rows of x where the template says 4
    else:
        inputs[2] = inputs[2][:3].copy()  # 3 palettes for 10 rows of 2
    return inputs, template, 10


GUARDED = [("lut_matvec", "K", "weight"), ("lut_matvec", "M", "x"), ("lut_matvec", "palettes", "lut"),
           ("ternary_matvec", "K", "scales"), ("ternary_matvec", "scales", "scales")]


@pytest.mark.parametrize("name,problem,buffer", GUARDED)
def test_the_guard_stops_a_read_past_the_end(name, problem, buffer):
    """With shapes that disagree, the kernel reads no input and writes NaN; the same kernel with the
    guard switched off reads past the end of ``buffer``, which the emulator reports."""
    inputs, template, rows = bad_shapes(name, problem)
    kernel = emulated(name)
    out = run(kernel, inputs, template, rows, np.float32)
    assert [kernel.traffic[n]["bytes"] for n in KERNELS[name][0]] == [0] * len(inputs)
    assert out.shape == (inputs[0].shape[0], rows)
    np.testing.assert_array_equal(out.view(np.uint32), 0x7FC00000)  # the kernel's NaN, not the poison
    unguarded = broken(name, "if (!fits) {", "if (false) {")
    with pytest.raises(KernelFault, match=rf"out-of-bounds read on input buffer '{buffer}'"):
        run(unguarded, inputs, template, rows, np.float32)


# ---- memory traffic ---------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["lut_matvec", "ternary_matvec"])
def test_x_traffic_is_no_larger_than_weight_traffic(name, dtype_name):
    """Decode (M = 1, 16-bit activations, K = 576 as in SmolLM2): every code word is read once and
    each x value once per simdgroup of 8 rows, so x costs 2/8 byte per weight, no more than 4-bit
    codes (1/2 byte) or 2-bit ternary codes plus scales (1/4 byte and more). One row per simdgroup,
    the old design, re-read x for every row: 2 bytes per weight."""
    rows, width = 64, 576
    if name == "lut_matvec":
        inputs, template, *_ = lut_case(1, rows, width, 4, 8, False, "float16", dtype_name)
        weight_inputs = ("weight",)
    else:
        inputs, template, _ = ternary_case(1, rows, width, 64, "float16", dtype_name)
        weight_inputs = ("weight", "scales")
    kernel = emulated(name)
    run(kernel, inputs, template, rows, DTYPES[dtype_name])
    simdgroups = rows // 8
    assert kernel.traffic["weight"]["bytes"] == inputs[1].nbytes
    assert kernel.traffic["x"]["bytes"] == simdgroups * inputs[0].nbytes
    weight_bytes = sum(kernel.traffic[n]["bytes"] for n in weight_inputs)
    assert kernel.traffic["x"]["bytes"] <= weight_bytes
    assert kernel.traffic["x"]["bytes"] / (rows * width) == 0.25


ON_A_MAC = pytest.mark.skipif(platform.system() != "Darwin", reason="Metal kernels run on the GPU only on a "
                               "Mac; elsewhere the emulator tests above stand in for them")


def on_the_gpu(array):
    """numpy (float32/float16/bfloat16/uint32) -> mx.array of the same dtype."""
    import mlx.core as mx

    if array.dtype == DTYPES["bfloat16"]:
        return mx.array(array.astype(np.float32)).astype(mx.bfloat16)
    return mx.array(array)


def gpu_product(function, *arrays):
    """``function`` on the GPU stream (skips without a Metal device): float32 numpy out."""
    import mlx.core as mx

    if not mx.metal.is_available():
        pytest.skip("no Metal device")
    with mx.stream(mx.gpu):
        out = function(*[None if a is None else on_the_gpu(a) for a in arrays])
        return np.array(out.astype(mx.float32))


@ON_A_MAC
@pytest.mark.mlx
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", LUT_CASES)
def test_lut_kernel_on_the_gpu(case, dtype_name):
    """Every emulated lut case through ``lut_matmul`` (the kernel for M <= 8), held to ``x @ W.T``."""
    from mlx_slm.kernels.ops import lut_matmul

    inputs, _, codes, lut, scales = lut_case(*case, dtype_name)
    bits, group = case[3], case[4]
    out = gpu_product(lambda x, w, t, s: lut_matmul(x, w, t, s, bits, group), inputs[0], inputs[1], lut, scales)
    plain = lut_reference(inputs[0], codes, lut, scales, group)[1]
    np.testing.assert_allclose(out, plain, rtol=0, atol=TOLERANCE[dtype_name] * np.abs(plain).max())


@ON_A_MAC
@pytest.mark.mlx
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", TERNARY_CASES)
def test_ternary_kernel_on_the_gpu(case, dtype_name):
    """Every emulated ternary case through ``ternary_matmul``, held to ``x @ W.T``."""
    from mlx_slm.kernels.ops import ternary_matmul

    inputs, _, codes = ternary_case(*case, dtype_name)
    out = gpu_product(lambda x, w, s: ternary_matmul(x, w, s, case[3]), *inputs)
    plain = ternary_reference(inputs[0], codes, inputs[2])[1]
    np.testing.assert_allclose(out, plain, rtol=0, atol=TOLERANCE[dtype_name] * np.abs(plain).max())
