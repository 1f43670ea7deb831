"""The CPU emulator of Metal kernels: GPU semantics against numpy, and the bugs it
must catch (out-of-bounds access, missing barrier, barrier divergence, wrong
lane reduction). Needs numpy and a C++ compiler, never MLX."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ml_dtypes import bfloat16

from mlx_slm.errors import SLMError
from mlx_slm.kernels.emulator import EmulatedKernel, KernelCompileError, KernelFault

RNG = np.random.default_rng(0)

SCALE_ADD = EmulatedKernel("scale_add", ["inp", "bias"], ["out"], """
    uint i = thread_position_in_grid.x;
    if (i >= inp_shape[0]) return;
    out[i] = T(float(inp[i]) * SCALE + float(bias));
""")


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float16, 1e-3), (bfloat16, 1e-2)])
def test_elementwise_with_template_int_and_0d_input(dtype, tol):
    x = RNG.standard_normal(1000).astype(dtype)
    (out,) = SCALE_ADD(inputs=[x, np.float32(0.5)], template=[("T", dtype), ("SCALE", 3)],
                       grid=(1000, 1, 1), threadgroup=(256, 1, 1), output_shapes=[x.shape], output_dtypes=[dtype])
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out.astype(np.float32), x.astype(np.float32) * 3 + 0.5, rtol=tol, atol=tol)


def test_shape_strides_ndim_and_2d_grid():
    kernel = EmulatedKernel("transpose", ["inp"], ["out", "copy"], """
        uint2 p = uint2(thread_position_in_grid.x, thread_position_in_grid.y);
        if (p.x >= uint(inp_shape[1]) || p.y >= uint(inp_shape[0]) || inp_ndim != 2) return;
        out[p.x * inp_shape[0] + p.y] = inp[p.y * inp_strides[0] + p.x * inp_strides[1]];
        uint flat = p.y * inp_shape[1] + p.x;
        copy[flat] = inp[elem_to_loc(flat, inp_shape, inp_strides, inp_ndim)];
    """)
    x = RNG.standard_normal((37, 70)).astype(np.float32)
    out, copy = kernel(inputs=[x], grid=(70, 37, 1), threadgroup=(16, 8, 1), output_shapes=[(70, 37), x.shape],
                       output_dtypes=[np.float32, np.float32])
    np.testing.assert_array_equal(out, x.T)
    np.testing.assert_array_equal(copy, x)


# One partial sum per threadgroup: simd_sum, threadgroup memory, a barrier, then
# the first simdgroup adds the partials.
BLOCK_SUM = """
    uint gid = thread_position_in_grid.x;
    uint lane = thread_index_in_simdgroup;
    uint sg = simdgroup_index_in_threadgroup;
    threadgroup float partial[32];
    float v = gid < n ? float(inp[gid]) : 0.0f;
    v = simd_sum(v);
    if (lane == 0) partial[sg] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sg == 0) {
        float p = lane < simdgroups_per_threadgroup ? partial[lane] : 0.0f;
        p = simd_sum(p);
        if (lane == 0) out[threadgroup_position_in_grid.x] = p;
    }
"""
BLOCK_SUM_KERNEL = EmulatedKernel("block_sum", ["inp", "n"], ["out"], BLOCK_SUM)


def _block_sums(x, block):
    return np.array([x[i:i + block].sum(dtype=np.float64) for i in range(0, x.size, block)])


@pytest.mark.parametrize("n", [1, 33, 1000, 1031])
def test_threadgroup_reduction_with_partial_last_group(n):
    x = RNG.standard_normal(n).astype(np.float16)
    groups = -(-n // 256)
    (out,) = BLOCK_SUM_KERNEL(inputs=[x, np.uint32(n)], grid=(n, 1, 1), threadgroup=(256, 1, 1),
                              output_shapes=[(groups,)], output_dtypes=[np.float32])
    np.testing.assert_allclose(out, _block_sums(x.astype(np.float32), 256), rtol=1e-5, atol=1e-5)


# Lane sums by shuffles; OFFSETS picks the shuffle distances.
SHUFFLE_SUM = """
    uint gid = thread_position_in_grid.x;
    float v = inp[gid];
    for (ushort d = 16; d >= 1; d /= 2) v += SHUFFLE;
    out[gid] = v;
"""


def _shuffle_kernel(name, shuffle, first=16):
    return EmulatedKernel(name, ["inp"], ["out"],
                          SHUFFLE_SUM.replace("SHUFFLE", shuffle).replace("d = 16", f"d = {first}"))


def _run_lanes(kernel, x):
    (out,) = kernel(inputs=[x], grid=(x.size, 1, 1), threadgroup=(64, 1, 1), output_shapes=[x.shape],
                    output_dtypes=[np.float32])
    return out.reshape(-1, 32)


def test_shuffle_xor_butterfly_gives_every_lane_the_sum():
    x = RNG.standard_normal(128).astype(np.float32)
    out = _run_lanes(_shuffle_kernel("xor_sum", "simd_shuffle_xor(v, d)"), x)
    expected = np.repeat(x.reshape(-1, 32).sum(axis=1, keepdims=True), 32, axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_shuffle_down_reduction_right_and_wrong():
    x = RNG.standard_normal(128).astype(np.float32)
    lane_sums = x.reshape(-1, 32).sum(axis=1)
    good = _run_lanes(_shuffle_kernel("down_sum", "simd_shuffle_down(v, d)"), x)
    np.testing.assert_allclose(good[:, 0], lane_sums, rtol=1e-5, atol=1e-5)
    # A reduction that starts at distance 8 misses half the lanes.
    wrong = _run_lanes(_shuffle_kernel("down_sum_wrong", "simd_shuffle_down(v, d)", first=8), x)
    assert not np.allclose(wrong[:, 0], lane_sums, rtol=1e-3, atol=1e-3)
    # Shuffle up by the same distances collects into the last lane instead of lane 0.
    up = _run_lanes(_shuffle_kernel("up_sum", "simd_shuffle_up(v, d)"), x)
    np.testing.assert_allclose(up[:, 31], lane_sums, rtol=1e-5, atol=1e-5)
    assert not np.allclose(up[:, 0], lane_sums, rtol=1e-3, atol=1e-3)


def test_simd_ops_on_partial_simdgroup_use_active_lanes_only():
    kernel = EmulatedKernel("lane_ops", ["inp"], ["out"], """
        uint gid = thread_position_in_grid.x;
        float v = inp[gid];
        out[4 * gid + 0] = simd_sum(v);
        out[4 * gid + 1] = simd_max(v);
        out[4 * gid + 2] = simd_prefix_exclusive_sum(v);
        out[4 * gid + 3] = simd_broadcast(v, 3);
    """)
    x = np.arange(40, dtype=np.float32)  # a full simdgroup, then 8 lanes
    (out,) = kernel(inputs=[x], grid=(40, 1, 1), threadgroup=(64, 1, 1), output_shapes=[(160,)],
                    output_dtypes=[np.float32])
    out = out.reshape(40, 4)
    for lanes in (x[:32], x[32:]):
        rows = out[lanes.astype(int)]
        np.testing.assert_array_equal(rows[:, 0], lanes.sum())
        np.testing.assert_array_equal(rows[:, 1], lanes.max())
        np.testing.assert_array_equal(rows[:, 2], np.cumsum(lanes) - lanes)
        np.testing.assert_array_equal(rows[:, 3], lanes[3])


def test_vector_types_math_as_type_and_select():
    kernel = EmulatedKernel("vectors", ["inp"], ["out", "bits"], """
        uint i = thread_position_in_grid.x;
        float4 v = ((const device float4*)inp)[i];
        half4 h = half4(v);
        float2 lo = float2(v.x, v.y);
        float4 w = float4(lo, v.z, max(v.w, 0.0f)) * 2.0f + 1.0f;
        out[i] = dot(w, float4(1.0f)) + float(h[3]) + select(0.0f, exp(v.x), v.y > 0.0f) + abs(-v.z);
        bits[i] = as_type<uint>(v.x);
    """)
    x = RNG.standard_normal((16, 4)).astype(np.float32)
    out, bits = kernel(inputs=[x], grid=(16, 1, 1), threadgroup=(16, 1, 1), output_shapes=[(16,), (16,)],
                       output_dtypes=[np.float32, np.uint32])
    w = np.concatenate([x[:, :3], np.maximum(x[:, 3:], 0)], axis=1) * 2 + 1
    expected = (w.sum(axis=1) + x[:, 3].astype(np.float16).astype(np.float32)
                + np.where(x[:, 1] > 0, np.exp(x[:, 0]), 0) + np.abs(x[:, 2]))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bits, x[:, 0].view(np.uint32))


def test_simd_sum_in_a_branch_uses_the_lanes_in_the_branch():
    kernel = EmulatedKernel("half_lanes", ["inp"], ["out"], """
        uint lane = thread_index_in_simdgroup;
        out[thread_position_in_grid.x] = 0.0f;
        if (lane < 16) out[thread_position_in_grid.x] = simd_sum(inp[thread_position_in_grid.x]);
        threadgroup_barrier(mem_flags::mem_none);
    """)
    x = RNG.standard_normal(64).astype(np.float32)
    (out,) = kernel(inputs=[x], grid=(64, 1, 1), threadgroup=(64, 1, 1), output_shapes=[(64,)],
                    output_dtypes=[np.float32])
    sums = x.reshape(2, 2, 16).sum(axis=2)[:, 0]
    np.testing.assert_allclose(out.reshape(2, 32)[:, :16], np.repeat(sums[:, None], 16, axis=1), rtol=1e-5)
    assert not out.reshape(2, 32)[:, 16:].any()


def test_atomic_outputs_histogram():
    kernel = EmulatedKernel("histogram", ["inp"], ["out"], """
        uint i = thread_position_in_grid.x;
        atomic_fetch_add_explicit(&out[inp[i]], 1u, memory_order_relaxed);
    """, atomic_outputs=True)
    x = RNG.integers(0, 10, 500).astype(np.uint32)
    (out,) = kernel(inputs=[x], grid=(500, 1, 1), threadgroup=(128, 1, 1), output_shapes=[(10,)],
                    output_dtypes=[np.uint32], init_value=0)
    np.testing.assert_array_equal(out, np.bincount(x, minlength=10))


def test_threadgroup_memory_is_not_carried_between_groups():
    kernel = EmulatedKernel("stale", ["inp"], ["out"], """
        threadgroup float seen[1];
        if (threadgroup_position_in_grid.x == 0) seen[0] = inp[0];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        out[threadgroup_position_in_grid.x] = seen[0];
    """)
    (out,) = kernel(inputs=[np.ones(1, np.float32)], grid=(64, 1, 1), threadgroup=(32, 1, 1),
                    output_shapes=[(2,)], output_dtypes=[np.float32])
    assert out[0] == 1 and np.isnan(out[1])


def test_matvec_576x1536_is_fast():
    kernel = EmulatedKernel("matvec", ["w", "x"], ["out"], """
        uint row = threadgroup_position_in_grid.x * 2 + simdgroup_index_in_threadgroup;
        uint b = thread_position_in_grid.y;
        uint lane = thread_index_in_simdgroup;
        if (row >= M) return;
        float acc = 0.0f;
        for (uint k = lane; k < K; k += 32) acc += float(w[row * K + k]) * float(x[b * K + k]);
        acc = simd_sum(acc);
        if (lane == 0) out[b * M + row] = acc;
    """)
    m, k, rows = 576, 1536, 8
    w = RNG.standard_normal((m, k)).astype(np.float16)
    x = RNG.standard_normal((rows, k)).astype(np.float16)
    args = dict(inputs=[w, x], template=[("M", m), ("K", k)], grid=(m * 32, rows, 1), threadgroup=(64, 1, 1),
                output_shapes=[(rows, m)], output_dtypes=[np.float32])
    kernel(**args)  # compile
    start = time.perf_counter()
    (out,) = kernel(**args)
    elapsed = time.perf_counter() - start
    np.testing.assert_allclose(out, x.astype(np.float32) @ w.astype(np.float32).T, rtol=1e-4, atol=1e-3)
    assert elapsed < 3.0, f"{elapsed:.2f} s"


# ---- broken kernels -------------------------------------------------------------
@pytest.mark.parametrize("n", [100, 3, 1])  # past a guard page; into the redzone slack; before the start
def test_out_of_bounds_write_names_the_buffer(n):
    shift = "out[i + 1]" if n > 1 else "out[int(i) - 1]"
    kernel = EmulatedKernel(f"shift{n}", ["inp"], ["out"], f"""
        uint i = thread_position_in_grid.x;
        {shift} = inp[i];
    """)
    element = n if n > 1 else -1
    with pytest.raises(KernelFault, match=rf"out-of-bounds write on output buffer 'out': element {element} of {n}"):
        kernel(inputs=[np.zeros(n, np.float32)], grid=(n, 1, 1), threadgroup=(32, 1, 1),
               output_shapes=[(n,)], output_dtypes=[np.float32])


def test_out_of_bounds_read_names_the_buffer():
    kernel = EmulatedKernel("far_read", ["inp"], ["out"], """
        uint i = thread_position_in_grid.x;
        out[i] = inp[i + 4096];
    """)
    with pytest.raises(KernelFault, match=r"out-of-bounds read on input buffer 'inp'"):
        kernel(inputs=[np.zeros(100, np.float32)], grid=(100, 1, 1), threadgroup=(32, 1, 1),
               output_shapes=[(100,)], output_dtypes=[np.float32])


def test_two_threadgroups_writing_one_element_is_a_race():
    kernel = EmulatedKernel("last_writer", ["inp"], ["out"], """
        out[0] = inp[threadgroup_position_in_grid.x];
    """)
    with pytest.raises(KernelFault, match=r"race"):
        kernel(inputs=[np.arange(4, dtype=np.float32)], grid=(128, 1, 1), threadgroup=(32, 1, 1),
               output_shapes=[(1,)], output_dtypes=[np.float32])


def test_missing_barrier_is_reported_as_a_race():
    racy = EmulatedKernel("block_sum_racy", ["inp", "n"], ["out"],
                          BLOCK_SUM.replace("threadgroup_barrier(mem_flags::mem_threadgroup);", ""))
    x = RNG.standard_normal(1000).astype(np.float32)
    with pytest.raises(KernelFault, match=r"race / missing threadgroup_barrier"):
        racy(inputs=[x, np.uint32(1000)], grid=(1000, 1, 1), threadgroup=(256, 1, 1), output_shapes=[(4,)],
             output_dtypes=[np.float32])


def test_barrier_divergence_is_reported_not_a_hang():
    kernel = EmulatedKernel("early_exit", ["inp"], ["out"], """
        uint i = thread_position_in_grid.x;
        threadgroup float tile[64];
        if (i % 2 == 1) return;
        tile[thread_index_in_threadgroup] = inp[i];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        out[i] = tile[thread_index_in_threadgroup ^ 2];
    """)
    with pytest.raises(KernelFault, match=r"barrier divergence"):
        kernel(inputs=[np.zeros(64, np.float32)], grid=(64, 1, 1), threadgroup=(64, 1, 1),
               output_shapes=[(64,)], output_dtypes=[np.float32])


def test_compile_error_points_at_the_kernel_line():
    kernel = EmulatedKernel("typo", ["inp"], ["out"], "uint i = thread_position_in_grid.x;\nout[i] = inp[i] +;\n")
    with pytest.raises(KernelCompileError, match=r"source:2:"):
        kernel(inputs=[np.zeros(4, np.float32)], grid=(4, 1, 1), threadgroup=(4, 1, 1), output_shapes=[(4,)],
               output_dtypes=[np.float32])


@pytest.mark.parametrize("change, message", [
    (dict(inputs=[]), "takes 2 inputs"),
    (dict(grid=(8, 1)), "grid must be a 3-tuple"),
    (dict(threadgroup=(64, 32, 1)), "at most 1024"),
    (dict(output_dtypes=[]), "has 1 outputs"),
])
def test_bad_calls_are_clear_errors(change, message):
    args = dict(inputs=[np.zeros(8, np.float32), np.float32(0)], template=[("T", np.float32), ("SCALE", 1)],
                grid=(8, 1, 1), threadgroup=(8, 1, 1), output_shapes=[(8,)], output_dtypes=[np.float32])
    with pytest.raises(SLMError, match=message):
        SCALE_ADD(**{**args, **change})


def test_traffic_counts_each_access_at_its_width():
    """``traffic``: one access per element read or written through a buffer pointer, of the
    element's width (a float4 load is one access of 16 bytes); ``simd_ops``: one per simdgroup
    and simd call."""
    kernel = EmulatedKernel("traffic", ["vec", "flat"], ["out"], """
        uint i = thread_position_in_grid.x;
        const device float4* v = (const device float4*)vec;
        float s = v[i].x + flat[4 * i] + flat[4 * i + 1];
        out[i] = simd_sum(s);
    """)
    vec, flat = np.ones(256, np.float32), np.ones(256, np.float32)
    (out,) = kernel(inputs=[vec, flat], grid=(64, 1, 1), threadgroup=(64, 1, 1), output_shapes=[(64,)],
                    output_dtypes=[np.float32])
    np.testing.assert_array_equal(out, 96.0)
    assert kernel.traffic == {"vec": {"accesses": 64, "bytes": 64 * 16}, "flat": {"accesses": 128, "bytes": 128 * 4},
                              "out": {"accesses": 64, "bytes": 64 * 4}}
    assert kernel.simd_ops == 2
