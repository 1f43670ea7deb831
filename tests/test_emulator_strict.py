"""The emulator's Metal strictness: address spaces as distinct types (MLX passes an
input of fewer than 8 elements as ``constant``), constructs Metal rejects, exact
buffer bounds, checked arrays, and the shuffled schedule of the race check.
Each planted bug compiles and runs unnoticed under plain g++ with empty
address-space macros and forward/reverse schedules only. Needs numpy and a C++
compiler, never MLX."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_slm.kernels import emulator
from mlx_slm.kernels.emulator import EmulatedKernel, KernelCompileError, KernelFault


def run(kernel, n=16, dtype=np.float32, **extra):
    return kernel(inputs=[np.arange(n, dtype=dtype)], grid=(n, 1, 1), threadgroup=(32, 1, 1),
                  output_shapes=[(n,)], output_dtypes=[dtype], **extra)[0]


# ---- address spaces ---------------------------------------------------------------
@pytest.mark.parametrize("space, n, compiles", [
    ("device", 8, True), ("device", 7, False), ("constant", 7, True), ("constant", 8, False)])
def test_inputs_under_8_elements_are_constant_as_in_mlx(space, n, compiles):
    kernel = EmulatedKernel(f"alias_{space}", ["inp"], ["out"], f"""
        const {space} float* p = inp;
        uint i = thread_position_in_grid.x;
        out[i] = p[i] * 2.0f;
    """)
    if compiles:
        np.testing.assert_array_equal(run(kernel, n), np.arange(n) * 2)
    else:
        with pytest.raises(KernelCompileError, match=r"(?s)source:2:.*address space"):
            run(kernel, n)


def test_casts_stay_in_their_address_space():
    kernel = EmulatedKernel("vec_cast", ["inp"], ["out"], """
        uint i = thread_position_in_grid.x;
        const device float4* v = reinterpret_cast<const device float4*>(inp);
        if (i < 4) out[i] = v[i].x + v[i].w;
    """)
    (out,) = kernel(inputs=[np.arange(16, dtype=np.float32)], grid=(4, 1, 1), threadgroup=(4, 1, 1),
                    output_shapes=[(4,)], output_dtypes=[np.float32])
    np.testing.assert_array_equal(out, np.arange(16, dtype=np.float32).reshape(4, 4)[:, [0, 3]].sum(axis=1))
    to_threadgroup = EmulatedKernel("bad_cast", ["inp"], ["out"], """
        threadgroup const float* t = reinterpret_cast<threadgroup const float*>(inp);
        out[0] = t[0];
    """)
    with pytest.raises(KernelCompileError, match="source:2:"):
        run(to_threadgroup)


# ---- what Metal forbids ---------------------------------------------------------------
FORBIDDEN = {  # name: (header, body, expected message)
    "double": ("", "double v = inp[i]; out[i] = float(v);", r"source:2: double"),
    "long double": ("", "long double v = inp[i]; out[i] = float(v);", r"source:2: long double"),
    "recursion": ("float fact(float n) { return n <= 1.0f ? 1.0f : n * fact(n - 1.0f); }",
                  "out[i] = fact(inp[i]);", r"header:1: recursion: 'fact'"),
    "std::vector": ("#include <vector>", "std::vector<float> v(4, inp[i]); out[i] = v[3];",
                    r"source:2: std::: the C\+\+ standard library"),
    "new": ("", "thread float* p = new float[4]; p[0] = inp[i]; out[i] = p[0]; delete[] p;",
            r"source:2: new/delete"),
    "exceptions": ("", "if (i > 1000) throw 1; out[i] = inp[i];", r"source:2: exceptions"),
    "function pointer": ("float twice(float v) { return 2.0f * v; }",
                         "float (*f)(float) = twice; out[i] = f(inp[i]);", r"source:2: function pointer"),
    "printf": ("#include <cstdio>", "printf(\"%f\", inp[i]); out[i] = inp[i];", r"source:2: C library call"),
    "static local": ("", "static int calls = 0; calls++; out[i] = inp[i];", r"source:2: static local"),
    "unqualified pointer": ("", "float v = inp[i]; float* p = &v; out[i] = *p;",
                            r"source:2: pointer without an address space \('float\*'\)"),
    "64-bit atomic": ("", "threadgroup atomic<ulong> n; out[i] = inp[i];", r"source:2: 64-bit atomic"),
}


@pytest.mark.parametrize("name", list(FORBIDDEN))
def test_what_metal_forbids_is_rejected(name):
    header, body, message = FORBIDDEN[name]
    kernel = EmulatedKernel("forbidden", ["inp"], ["out"], "uint i = thread_position_in_grid.x;\n" + body,
                            header=header)
    with pytest.raises(KernelCompileError, match=message):
        run(kernel)


def test_64_bit_atomic_outputs_are_rejected():
    kernel = EmulatedKernel("count64", ["inp"], ["out"], """
        atomic_fetch_add_explicit(&out[0], 1ul, memory_order_relaxed);
    """, atomic_outputs=True)
    with pytest.raises(KernelCompileError, match="atomic output 'out' of uint64_t"):
        run(kernel, dtype=np.uint64, init_value=0)


def test_the_lint_reads_code_not_comments_or_qualified_pointers():
    kernel = EmulatedKernel("clean", ["inp"], ["out"], """
        // a double, new, std::vector<float>, float* p and printf() in a comment are fine
        uint i = thread_position_in_grid.x;
        thread float v = inp[i];
        thread float* p = &v;
        const device float* q = inp + i;
        out[i] = *p + *q;
    """)
    np.testing.assert_array_equal(run(kernel), np.arange(16) * 2)


# ---- bounds -----------------------------------------------------------------------
@pytest.mark.parametrize("read, element", [("inp[i + 1]", 10), ("inp[int(i) - 1]", -1)])
def test_a_read_just_outside_an_input_is_caught(read, element):
    """One element past the end lands in the slack below 16 bytes, one before the start in
    the page below: both were readable before buffers had exact bounds."""
    kernel = EmulatedKernel(f"edge_read{element + 1}", ["inp"], ["out"], f"""
        uint i = thread_position_in_grid.x;
        out[i] = {read};
    """)
    with pytest.raises(KernelFault, match=rf"out-of-bounds read on input buffer 'inp': element {element} of 10"):
        run(kernel, 10)


def test_a_wide_load_straddling_the_end_is_caught():
    kernel = EmulatedKernel("straddle", ["inp"], ["out"], """
        uint i = thread_position_in_grid.x;
        const device float4* v = (const device float4*)inp;
        out[i] = v[i].x;
    """)
    with pytest.raises(KernelFault, match=r"out-of-bounds read on input buffer 'inp': element 8 of 10"):
        run(kernel, 10)


def test_threadgroup_array_overrun_names_the_array():
    kernel = EmulatedKernel("tile_overrun", ["inp"], ["out"], """
        threadgroup float tile[32];
        uint i = thread_index_in_threadgroup;
        tile[i + 1] = inp[thread_position_in_grid.x];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        out[thread_position_in_grid.x] = tile[i];
    """)
    with pytest.raises(KernelFault, match=r"thread \(31, 0, 0\): index 32 out of bounds of array 'tile\[32\]' "
                                          r"\(source:2\)"):
        run(kernel, 32)


# ---- schedules --------------------------------------------------------------------
# A neighbour sum through threadgroup memory without its barrier: in forward order every
# thread reads its right neighbour before that neighbour wrote, in reverse order its left
# one, so both orders give NaN (poison) everywhere and agree; a shuffled order does not.
STENCIL = EmulatedKernel("stencil", ["inp"], ["out"], """
    uint i = thread_index_in_threadgroup;
    threadgroup float tile[64];
    tile[i] = inp[thread_position_in_grid.x];
    out[thread_position_in_grid.x] = (i > 0 && i < 63) ? tile[i - 1] + tile[i + 1] : 0.0f;
""")


def test_a_race_forward_and_reverse_order_agree_on_is_caught(monkeypatch):
    args = dict(inputs=[np.ones(128, np.float32)], grid=(128, 1, 1), threadgroup=(64, 1, 1),
                output_shapes=[(128,)], output_dtypes=[np.float32])
    monkeypatch.setattr(emulator, "SCHEDULES", emulator.SCHEDULES[:2])
    assert np.isnan(STENCIL(**args)[0][1:63]).all()  # forward and reverse agree
    monkeypatch.undo()
    with pytest.raises(KernelFault, match=r"race / missing threadgroup_barrier.*forward vs shuffled order"):
        STENCIL(**args)
    fixed = EmulatedKernel("stencil_fixed", ["inp"], ["out"], STENCIL.source.replace(
        "tile[i] = inp[thread_position_in_grid.x];",
        "tile[i] = inp[thread_position_in_grid.x];\n    threadgroup_barrier(mem_flags::mem_threadgroup);"))
    out = fixed(**args)[0].reshape(2, 64)
    np.testing.assert_array_equal(out[:, 1:63], 2.0)
