"""Run the project's Metal compute kernels on the CPU, so Linux CI can test them.

:class:`EmulatedKernel` mirrors ``mx.fast.metal_kernel``: the same kernel body,
header and call arguments, numpy arrays in and out, no MLX needed. The body is
wrapped in the signature MLX would generate and compiled, line for line, as
C++17 (``$CXX`` or g++/clang++) behind ``metal_shim.h``; each thread of a
threadgroup then runs as a cooperative fiber (``emulator_runtime.cpp``).

Before compiling, ``metal_lint.py`` rejects what Metal forbids and g++ would
accept (double, std::, new, exceptions, recursion, static locals, printf,
function pointers, pointers without an address space, 64-bit atomics, ...), and
``metal_rewrite.py`` gives each address space its own pointer type: an input
with fewer than 8 elements is passed as ``const constant T*`` (MLX's rule), and
assigning it to a ``const device T*`` fails to compile as on the GPU.

Emulated: scalar types (``half``/``float16_t`` as ``_Float16``, ``bfloat16_t``
rounding to nearest even after each operation), 2/3/4-wide vector types with
``.x .y .z .w`` and ``[i]``, ``metal::`` math (also ``precise::``/``fast::``),
``as_type``, ``select``, ``threadgroup`` arrays, ``threadgroup_barrier``,
``simdgroup_barrier``, SIMD width 32 with ``simd_sum/product/max/min/and/or/xor``,
``simd_prefix_{in,ex}clusive_sum``, ``simd_all/any``, ``simd_shuffle``,
``simd_shuffle_{up,down,xor}``, ``simd_broadcast(_first)``, and ``atomic_outputs``
(plain memory: a fiber is never preempted). A shuffle whose source lane is out of
range or not taking part returns the caller's own value.
``threads_per_threadgroup`` is the real size of an edge threadgroup
(``dispatch_threads_per_threadgroup`` the requested one).

Counted: the accesses through each buffer's pointers and the bytes they cover
(``EmulatedKernel.traffic`` after a call), and the simd operations
(``simd_ops``): the memory traffic and synchronising instructions of a launch.

Bugs reported as :class:`KernelFault`:

- out-of-bounds access to a buffer: kernel pointers carry their buffer's exact
  bounds, so a read or write of any byte before its start or past its end
  faults at once, named read or write; behind that (raw pointers taken with
  ``&``) each buffer sits between 32 MiB of guard pages with a redzone in the
  slack below 16 bytes checked after the run; inputs are read-only;
- an index outside a thread-private or threadgroup array (``T name[N]``):
  indexing is checked, the fault names the array and its line;
- a race / missing ``threadgroup_barrier``: the kernel runs three times,
  threadgroups and threads in forward order, in reverse order, then shuffled
  (seeded; a new order of the waiting threads at every barrier / simd point),
  switching only where they synchronise, threadgroup memory poisoned with NaN /
  0xFF bytes at the start of each group; outputs that differ mean the result
  depends on scheduling;
- barrier divergence: some threads wait at a barrier others never reach;
- lanes of one simdgroup waiting at different simd operations at once (legal in
  divergent GPU code, but the emulator cannot order them, and says so). Lanes
  that returned or wait at a threadgroup barrier sit out a simd op, as
  inactive lanes do on the GPU.

Not emulated: textures, ``simdgroup_matrix``, ``quad_*`` ops, swizzles such as
``.xy``, vector comparisons, half-precision subnormal flushing, and GPU float
summation order inside ``simd_sum`` (lanes are added in lane order), the
``ensure_row_contiguous=False`` path (inputs are always copied row-contiguous).
Not checked: the address space of references (``const constant T&`` is a plain
reference), pointers taken with ``&`` (bounded only by the guard pages), and
pointers into thread / threadgroup arrays (unbounded once formed); the lint is
textual, so it can miss a construct it has no pattern for.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ml_dtypes import bfloat16 as _BF16

from mlx_slm.errors import SLMError

from . import KERNEL_DIR
from .metal_lint import lint
from .metal_rewrite import Arrays, metal_to_cxx

MAX_THREADS_PER_THREADGROUP = 1024
# MLX passes an input with fewer elements than this in the constant address space.
MAX_CONSTANT_ARRAY_SIZE = 8
# The race check's schedules (emu_run's `schedule`): forward, reverse, shuffled with this seed.
SCHEDULES = (0, 1, 0x5EED)
# F16C (every x86-64 CPU since 2012) turns half <-> float conversions into one instruction.
_CXX_FLAGS = ["-std=c++17", "-O2", "-fPIC", "-w", "-fno-strict-aliasing"] + (
    ["-mf16c"] if platform.machine().lower() in ("x86_64", "amd64") else [])


class KernelFault(SLMError):
    """The kernel did something a GPU would not forgive: named in the message."""


class KernelCompileError(SLMError):
    """The kernel text does not compile; the message has the compiler's errors."""


_METAL_TYPES = {
    np.dtype(np.float32): "float", np.dtype(np.float16): "float16_t", np.dtype(np.bool_): "bool",
    np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t", np.dtype(np.int16): "int16_t",
    np.dtype(np.uint16): "uint16_t", np.dtype(np.int32): "int32_t", np.dtype(np.uint32): "uint32_t",
    np.dtype(np.int64): "int64_t", np.dtype(np.uint64): "uint64_t", np.dtype(_BF16): "bfloat16_t",
}

_DISPATCH_THREADS = ("a->dispatch_threads_per_threadgroup.x * a->dispatch_threads_per_threadgroup.y"
                     " * a->dispatch_threads_per_threadgroup.z")
# Thread attributes MLX adds when the body names them: name -> (type, value in emu_attrs a).
_ATTRIBUTES = {
    "dispatch_quadgroups_per_threadgroup": ("uint", f"({_DISPATCH_THREADS} + 3) / 4"),
    "dispatch_simdgroups_per_threadgroup": ("uint", f"({_DISPATCH_THREADS} + 31) / 32"),
    "dispatch_threads_per_threadgroup": ("uint3", "a->dispatch_threads_per_threadgroup"),
    "grid_origin": ("uint3", "a->grid_origin"),
    "grid_size": ("uint3", "a->threads_per_grid"),
    "quadgroup_index_in_threadgroup": ("uint", "a->quadgroup_index_in_threadgroup"),
    "quadgroups_per_threadgroup": ("uint", "a->quadgroups_per_threadgroup"),
    "simdgroup_index_in_threadgroup": ("uint", "a->simdgroup_index_in_threadgroup"),
    "simdgroups_per_threadgroup": ("uint", "a->simdgroups_per_threadgroup"),
    "thread_execution_width": ("uint", "a->threads_per_simdgroup"),
    "thread_index_in_quadgroup": ("uint", "a->thread_index_in_quadgroup"),
    "thread_index_in_simdgroup": ("uint", "a->thread_index_in_simdgroup"),
    "thread_index_in_threadgroup": ("uint", "a->thread_index_in_threadgroup"),
    "thread_position_in_grid": ("uint3", "a->thread_position_in_grid"),
    "thread_position_in_threadgroup": ("uint3", "a->thread_position_in_threadgroup"),
    "threadgroup_position_in_grid": ("uint3", "a->threadgroup_position_in_grid"),
    "threadgroups_per_grid": ("uint3", "a->threadgroups_per_grid"),
    "threads_per_grid": ("uint3", "a->threads_per_grid"),
    "threads_per_simdgroup": ("uint", "a->threads_per_simdgroup"),
    "threads_per_threadgroup": ("uint3", "a->threads_per_threadgroup"),
}

_SYNC_CALL = re.compile(r"\b(?:threadgroup_barrier|simdgroup_barrier|simd_\w+)\s*\(")


class _Result(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("buffer", ctypes.c_int), ("offset", ctypes.c_longlong),
                ("is_write", ctypes.c_int), ("position", ctypes.c_uint * 3), ("message", ctypes.c_char * 400)]


_OUT_OF_BOUNDS, _REDZONE, _LIMIT, _ARRAY_INDEX = 1, 2, 6, 7
_LOADED: dict[str, ctypes.CDLL] = {}


def _metal_type(dtype) -> str:
    """Metal type name MLX uses for a numpy (or ml_dtypes, or MLX) dtype."""
    if str(dtype).startswith("mlx.core."):  # an mx.Dtype such as mlx.core.float16
        dtype = str(dtype).rsplit(".", 1)[1]
        dtype = _BF16 if dtype == "bfloat16" else dtype
    try:
        return _METAL_TYPES[np.dtype(dtype)]
    except (TypeError, KeyError):
        raise SLMError(f"the emulator has no Metal type for dtype {dtype!r}") from None


def _dims(value, what: str) -> tuple[int, int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise SLMError(f"{what} must be a 3-tuple (x, y, z), got {value!r}")
    if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
        raise SLMError(f"{what} must hold positive integers, got {value!r}")
    return tuple(int(v) for v in value)


def _template_lines(template) -> list[str]:
    lines = []
    for name, value in template or ():
        if isinstance(value, (bool, np.bool_)):
            lines.append(f"constexpr bool {name} = {'true' if value else 'false'};")
        elif isinstance(value, (int, np.integer)):
            lines.append(f"constexpr int {name} = {int(value)};")
        else:
            lines.append(f"typedef {_metal_type(value)} {name};")
    return lines


def _compiler() -> str:
    for cxx in (os.environ.get("CXX"), "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return shutil.which(cxx)
    raise SLMError("the Metal emulator needs a C++ compiler: install g++ or clang++, or set CXX")


def _cache_dir() -> Path:
    root = os.environ.get("MLX_SLM_EMULATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlx_slm", "emulator")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build(code: str) -> Path:
    """Compile ``code`` and link it with the runtime into a cached shared library.
    Files appear by atomic rename, so concurrent processes may build the same one."""
    cxx = _compiler()
    shim = (KERNEL_DIR / "metal_shim.h").read_text()
    runtime = _cached(["runtime", shim, (KERNEL_DIR / "emulator_runtime.cpp").read_text(), cxx], ".o",
                      lambda out: [cxx, *_CXX_FLAGS, "-I", str(KERNEL_DIR), "-c",
                                   str(KERNEL_DIR / "emulator_runtime.cpp"), "-o", out])
    return _cached(["kernel", shim, code, str(runtime), cxx], ".so",
                   lambda out: [cxx, *_CXX_FLAGS, "-shared", "-Wl,-Bsymbolic", "-I", str(KERNEL_DIR),
                                "-x", "c++", "kernel.cpp", "-x", "none", str(runtime), "-o", out],
                   code)


def _cached(key: list[str], suffix: str, command, code: str = "") -> Path:
    """The cache file for ``key``, made with ``command(out)`` (run in a temporary
    folder holding ``kernel.cpp`` = ``code``) when missing."""
    digest = hashlib.sha256("\0".join(key + _CXX_FLAGS).encode()).hexdigest()[:32]
    path = _cache_dir() / f"{key[0]}-{digest}{suffix}"
    if path.exists():
        return path
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        (Path(tmp) / "kernel.cpp").write_text(code)
        out = str(Path(tmp) / path.name)
        proc = subprocess.run(command(out), check=False, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise KernelCompileError(_compile_message(proc.stderr, tmp))
        os.replace(out, path)
    return path


def _compile_message(stderr: str, tmp: str) -> str:
    """The compiler's errors, file names reduced to header:/source: line numbers."""
    lines = [ln.replace(tmp + "/", "") for ln in stderr.splitlines()
             if "error" in ln or ln.startswith((" ", "source:", "header:"))]
    hint = ("\n(emu::ptr<S, T> is a pointer to T in address space S: 0 device, 1 constant, 2 threadgroup, "
            "3 thread; Metal converts none into another)") if "ptr<" in stderr else ""
    return "the kernel does not compile for the emulator:\n" + "\n".join(lines[:40]) + hint


def _load(path: Path) -> ctypes.CDLL:
    key = str(path)
    if key not in _LOADED:
        lib = ctypes.PyDLL(key)  # keeps the GIL: the runtime has process-wide state
        lib.emu_run.restype = ctypes.c_int
        lib.emu_run.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
                                ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint),
                                ctypes.POINTER(ctypes.c_uint), ctypes.c_int, ctypes.c_int,
                                ctypes.POINTER(_Result), ctypes.POINTER(ctypes.c_ulonglong)]
        _LOADED[key] = lib
    return _LOADED[key]


@dataclass
class _Buffer:
    """One kernel argument held in memory: an input, an output, or an input's
    shape/strides/ndim. ``by_reference``: passed as ``T&`` (0-d) instead of ``T*``."""

    name: str
    array: np.ndarray
    writable: bool
    cxx_type: str
    space: str = "device"
    by_reference: bool = False

    def parameter(self) -> str:
        """The argument as the kernel sees it (MLX's signature, in the shim's types)."""
        const = "" if self.writable else "const "
        if self.by_reference:
            return f"{const}{self.cxx_type}& {self.name}"
        return f"emu::ptr<emu::{self.space}_space, {const}{self.cxx_type}> {self.name}"

    def argument(self, index: int) -> str:
        """How the generated glue passes buffer ``index`` to the kernel."""
        const = "" if self.writable else "const "
        if self.by_reference:
            return f"*static_cast<{const}{self.cxx_type}*>(b[{index}].data)"
        return f"emu::bind<emu::{self.space}_space, {const}{self.cxx_type}>(b, {index})"


class EmulatedKernel:
    """A Metal kernel body run on the CPU, called like ``mx.fast.metal_kernel``.

    Inputs are always made row-contiguous (``ensure_row_contiguous`` is accepted
    for compatibility). ``race_check`` (on by default) runs the kernel under two
    thread schedules and raises :class:`KernelFault` when their outputs differ.

    After a call, ``traffic`` maps each input and output name to
    ``{"accesses": n, "bytes": b}``: the loads (inputs are read-only) or
    accesses (outputs) made through that buffer's pointers in the forward-order
    run, one per element access of whatever width, and the bytes they cover;
    ``simd_ops`` counts the simd operations (``simd_*``, ``simdgroup_barrier``),
    one per simdgroup and call. Per output element they are the memory traffic
    and the synchronising instructions a GPU would issue for the same launch.
    """

    def __init__(self, name: str, input_names, output_names, source: str, header: str = "",
                 ensure_row_contiguous: bool = True, atomic_outputs: bool = False, *, race_check: bool = True):
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise SLMError(f"kernel name must be an identifier, got {name!r}")
        self.name = name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.source, self.header = source, header
        self.atomic_outputs = atomic_outputs
        self.race_check = race_check
        self._uses_sync = bool(_SYNC_CALL.search(header + "\n" + source))
        self._arrays = Arrays()
        self.traffic: dict[str, dict[str, int]] = {}
        self.simd_ops = 0

    def __call__(self, *, inputs, output_shapes, output_dtypes, grid, threadgroup, template=None,
                 init_value=None, verbose: bool = False, stream=None) -> list[np.ndarray]:
        """Run over ``grid`` threads (x, y, z) in threadgroups of ``threadgroup``;
        returns the outputs, arrays of ``output_shapes`` / ``output_dtypes``."""
        grid, tg = _dims(grid, "grid"), _dims(threadgroup, "threadgroup")
        if tg[0] * tg[1] * tg[2] > MAX_THREADS_PER_THREADGROUP:
            raise SLMError(f"threadgroup {tg} has {tg[0] * tg[1] * tg[2]} threads; Metal allows at most "
                           f"{MAX_THREADS_PER_THREADGROUP}")
        if len(inputs) != len(self.input_names):
            raise SLMError(f"kernel {self.name} takes {len(self.input_names)} inputs "
                           f"({', '.join(self.input_names)}), got {len(inputs)}")
        if len(output_shapes) != len(self.output_names) or len(output_dtypes) != len(self.output_names):
            raise SLMError(f"kernel {self.name} has {len(self.output_names)} outputs; got "
                           f"{len(output_shapes)} shapes and {len(output_dtypes)} dtypes")
        arrays = [np.asarray(x).copy(order="C") if not np.asarray(x).flags.c_contiguous else np.asarray(x)
                  for x in inputs]
        buffers = self._buffers(arrays, output_shapes, output_dtypes, init_value)
        problems = lint(self.header, self.source, [n for n, v in template or () if not isinstance(v, (bool, int))])
        if problems:
            raise KernelCompileError(f"kernel {self.name} uses what Metal forbids:\n" + "\n".join(problems))
        code = self._code(buffers, template)
        if verbose:
            print(code)
        lib = _load(_build(code))
        first, counts = self._run(lib, buffers, grid, tg, SCHEDULES[0])
        names = set(self.input_names + self.output_names)
        self.traffic = {b.name: {"accesses": counts[2 * i], "bytes": counts[2 * i + 1]}
                        for i, b in enumerate(buffers) if b.name in names}
        self.simd_ops = counts[-1]
        for schedule in SCHEDULES[1:] if self.race_check else ():
            again, _ = self._run(lib, buffers, grid, tg, schedule)
            for name, a, b in zip(self.output_names, first, again):
                self._check_same(name, a, b, schedule)
        return first

    # ---- signature and code ---------------------------------------------------
    def _buffers(self, arrays, output_shapes, output_dtypes, init_value) -> list[_Buffer]:
        buffers = []
        for name, a in zip(self.input_names, arrays):
            space = "constant" if a.size < MAX_CONSTANT_ARRAY_SIZE else "device"
            buffers.append(_Buffer(name, a, False, _metal_type(a.dtype), space, a.ndim == 0))
            if f"{name}_shape" in self.source:
                buffers.append(_Buffer(f"{name}_shape", np.array(a.shape, np.int32), False, "int", "constant"))
            if f"{name}_strides" in self.source:
                strides = np.array([s // a.itemsize for s in a.strides], np.int64)
                buffers.append(_Buffer(f"{name}_strides", strides, False, "int64_t", "constant"))
            if f"{name}_ndim" in self.source:
                buffers.append(_Buffer(f"{name}_ndim", np.array(a.ndim, np.int32), False, "int", "constant", True))
        for name, shape, dtype in zip(self.output_names, output_shapes, output_dtypes):
            cxx = _metal_type(dtype)
            if self.atomic_outputs and np.dtype(_BF16 if cxx == "bfloat16_t" else dtype).itemsize == 8:
                raise KernelCompileError(f"kernel {self.name}: atomic output '{name}' of {cxx}: Metal atomics "
                                         "are 32-bit (atomic_int, atomic_uint, atomic_float)")
            out = np.empty(tuple(shape), dtype=_BF16 if cxx == "bfloat16_t" else dtype)
            if init_value is None:
                out.reshape(-1).view(np.uint8).fill(0xFF)  # uninitialised, as in MLX: poison it
            else:
                out.fill(init_value)
            buffers.append(_Buffer(name, out, True, f"atomic<{cxx}>" if self.atomic_outputs else cxx))
        return buffers

    def _code(self, buffers: list[_Buffer], template) -> str:
        params = [f"  {b.parameter()}" for b in buffers]
        args = [b.argument(i) for i, b in enumerate(buffers)]
        self._arrays = Arrays()
        header = metal_to_cxx(self.header, "header", self._arrays)
        source = metal_to_cxx(self.source, "source", self._arrays)
        for attr, (kind, value) in _ATTRIBUTES.items():
            if attr in self.source:
                params.append(f"  {kind} {attr}")
                args.append(value)
        return "\n".join([
            '#include "metal_shim.h"',
            '#line 1 "header"',
            header,
            '#line 1 "emulator_signature"',
            f"static void {self.name}(",
            ",\n".join(params) + ") {",
            *_template_lines(template),
            '#line 1 "source"',
            source,
            "}",
            '#line 1 "emulator_glue"',
            'extern "C" void emu_thread_main(const emu::buffer_view* b, const emu_attrs* a) {',
            f"  (void)a;\n  (void)b;\n  {self.name}(" + ", ".join(args) + ");",
            "}",
            "",
        ])

    # ---- running --------------------------------------------------------------
    def _run(self, lib, buffers: list[_Buffer], grid, tg, schedule: int) -> tuple[list[np.ndarray], list[int]]:
        """(outputs, counts): counts = accesses and bytes per buffer, then simd operations (emu_run)."""
        hosts = [b.array.copy() if b.writable else b.array for b in buffers]
        n = len(buffers)
        ptrs = (ctypes.c_void_p * n)(*[h.ctypes.data for h in hosts])
        sizes = (ctypes.c_size_t * n)(*[h.nbytes for h in hosts])
        writable = (ctypes.c_int * n)(*[int(b.writable) for b in buffers])
        result = _Result()
        counts = (ctypes.c_ulonglong * (2 * n + 1))()
        code = lib.emu_run(n, ptrs, sizes, writable, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*tg),
                           int(self._uses_sync), schedule, ctypes.byref(result), counts)
        if code:
            raise KernelFault(self._fault_message(result, buffers))
        return [h for h, b in zip(hosts, buffers) if b.writable], list(counts)

    def _fault_message(self, r: _Result, buffers: list[_Buffer]) -> str:
        where = f"kernel {self.name}"
        if r.code not in (_REDZONE, _LIMIT):
            where += f", thread {tuple(r.position)}"
        if r.code == _ARRAY_INDEX:
            array, file, line = self._arrays.names[r.buffer]
            return f"{where}: index {r.offset} out of bounds of array '{array}' ({file}:{line})"
        if r.code not in (_OUT_OF_BOUNDS, _REDZONE):
            return f"{where}: {r.message.decode(errors='replace')}"
        b = buffers[r.buffer]
        kind = "input" if not b.writable else "output"
        access = {1: "write", 0: "read"}.get(r.is_write, "access")
        if 0 <= r.offset < b.array.nbytes and r.message != b"outside the buffer's bounds":
            return f"{where}: write to read-only {kind} buffer '{b.name}' (element {r.offset // b.array.itemsize})"
        element = r.offset // b.array.itemsize
        return (f"{where}: out-of-bounds {access} on {kind} buffer '{b.name}': element {element} of "
                f"{b.array.size} (byte offset {r.offset})")

    def _check_same(self, name: str, a: np.ndarray, b: np.ndarray, schedule: int) -> None:
        """Raise if two schedules gave different outputs (atomic float outputs may
        differ by rounding: their order of additions is not fixed)."""
        if a.tobytes() == b.tobytes():
            return
        floating = a.dtype.kind == "f" or a.dtype == _BF16
        if self.atomic_outputs and floating and np.allclose(
                a.astype(np.float32), b.astype(np.float32), rtol=1e-3, atol=1e-6, equal_nan=True):
            return
        differ = (a.view(np.uint8).reshape(a.size, a.itemsize) != b.view(np.uint8).reshape(b.size, b.itemsize))
        index = tuple(int(i) for i in np.unravel_index(np.flatnonzero(differ.any(axis=1))[0], a.shape))
        raise KernelFault(
            f"kernel {self.name}: race / missing threadgroup_barrier: output '{name}' differs between two "
            f"thread schedules (forward vs {'reverse' if schedule == 1 else 'shuffled'} order) at index {index}: "
            f"{a[index]!r} vs {b[index]!r}; "
            f"a thread read memory before its writer reached a barrier (or two threads wrote it)")
