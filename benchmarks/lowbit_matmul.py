"""Matmul throughput per weight format on the device at hand: GB/s of stored weight bytes read.

    python benchmarks/lowbit_matmul.py [--rows 1 8 256] [--bandwidth-gbs 100] [--json runs/lowbit_matmul.json]

Shapes are SmolLM2-135M's (attention 576x576, MLP 1536x576 and 576x1536, the
tied 49152x576 head). Formats: fp16 and fp32 ``x @ W.T``, ``mx.quantized_matmul``
(affine 4-bit g64), and our ``lut`` (2/3/4-bit, 8 rows per palette) and
``ternary`` (per-row scale) products from ``mlx_slm.kernels.ops`` -- on a Metal GPU
the custom kernels for up to 8 activation rows, elsewhere MLX ops that
dequantize and multiply. Activations are float32 on a CPU and float16 on a GPU.
On a Mac the table adds the share of the chip's memory bandwidth
(``--bandwidth-gbs``, e.g. 100 for an M1/M2, 120 for an M3/M4, 273 for an M4 Pro).

Without a Metal GPU, a second table runs our Metal kernels in the CPU emulator
(``mlx_slm.kernels.emulator``) for each rows value up to 8, with float16
activations as on a GPU, and reports what they read per weight of the matrix:
bytes of x, of codes, and of palettes (lut) or scales (ternary); and per output
element the loads (accesses through an input pointer, any width) and simd
operations (per simdgroup) they issue. The JSON holds both tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import mlx_slm  # noqa: F401  (fast BLAS for MLX on Linux: before mlx)

# isort: split
import mlx.core as mx
import numpy as np

from mlx_slm.formats.affine import pack_codes
from mlx_slm.kernels import metal_source
from mlx_slm.kernels.emulator import EmulatedKernel
from mlx_slm.kernels.ops import lut_matmul, ternary_matmul
from mlx_slm.kernels.specs import KERNELS, MAX_X_ROWS, launch_shape, lut_template, ternary_template

SHAPES = {"attn 576x576": (576, 576), "mlp up 1536x576": (1536, 576), "mlp down 576x1536": (576, 1536),
          "head 49152x576": (49152, 576)}
LUT_GROUP = 8


def make_products(rows: int, width: int, rng) -> dict:
    """Format name -> (stored bytes, function of x computing x @ W.T)."""
    dense = mx.array(rng.standard_normal((rows, width)).astype(np.float32) * 0.05)
    products = {"fp32": (rows * width * 4, lambda x, w=dense: x @ w.T)}
    half = dense.astype(mx.float16)
    products["fp16"] = (rows * width * 2, lambda x, w=half: x @ w.T)
    packed, scales, biases = mx.quantize(dense.astype(mx.float16), group_size=64, bits=4)
    products["affine 4b g64"] = (packed.nbytes + scales.nbytes + biases.nbytes,
                                 lambda x: mx.quantized_matmul(x, packed, scales, biases, group_size=64, bits=4))
    for bits in (2, 3, 4):
        codes = mx.array(pack_codes(rng.integers(0, 1 << bits, (rows, width), dtype=np.uint8), bits))
        lut = mx.array(rng.standard_normal((rows // LUT_GROUP, 1 << bits)).astype(np.float16))
        products[f"lut {bits}b"] = (codes.nbytes + lut.nbytes,
                                    lambda x, c=codes, t=lut, b=bits: lut_matmul(x, c, t, None, b, LUT_GROUP))
    trits = mx.array(pack_codes(rng.integers(0, 3, (rows, width), dtype=np.uint8), 2))
    row_scales = mx.array(rng.uniform(0.01, 0.1, (rows, 1)).astype(np.float16))
    products["ternary"] = (trits.nbytes + row_scales.nbytes,
                           lambda x: ternary_matmul(x, trits, row_scales, 0))
    return products


def seconds_per_call(function, x, budget: float = 0.5) -> float:
    mx.eval(function(x))
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < budget:
        mx.eval(function(x))
        calls += 1
    return (time.perf_counter() - start) / calls


def kernel_case(fmt: str, rows: int, width: int, m: int, rng) -> tuple[str, list, list]:
    """(kernel name, inputs, template) of ``fmt`` ("lut 4b", "ternary", ...) as make_products stores it."""
    x = rng.standard_normal((m, width)).astype(np.float16)
    if fmt == "ternary":
        codes = pack_codes(rng.integers(0, 3, (rows, width), dtype=np.uint8), 2)
        scales = rng.uniform(0.01, 0.1, (rows, 1)).astype(np.float16)
        return "ternary_matvec", [x, codes, scales], ternary_template(np.float16, m, width, 1)
    bits = int(fmt.split()[1][0])
    codes = pack_codes(rng.integers(0, 1 << bits, (rows, width), dtype=np.uint8), bits)
    lut = rng.standard_normal((rows // LUT_GROUP, 1 << bits)).astype(np.float16)
    return ("lut_matvec", [x, codes, lut, np.ones((1, 1), np.float16)],
            lut_template(np.float16, m, bits, LUT_GROUP, False))


def emulated_traffic(fmt: str, rows: int, width: int, m: int, rng) -> dict:
    """What our Metal kernel for ``fmt`` reads, from one emulated run: bytes per weight of x, of
    codes and of palettes/scales; loads and simd operations per output element."""
    name, inputs, template = kernel_case(fmt, rows, width, m, rng)
    kernel = EmulatedKernel(name, *KERNELS[name], metal_source(name), race_check=False)
    grid, threadgroup = launch_shape(rows, m)
    kernel(inputs=inputs, template=template, grid=grid, threadgroup=threadgroup, output_shapes=[(m, rows)],
           output_dtypes=[np.float16])
    table = "scales" if name == "ternary_matvec" else "lut"
    weights, outputs = rows * width, m * rows
    loads = sum(kernel.traffic[n]["accesses"] for n in KERNELS[name][0])
    return {"x_bytes_per_weight": kernel.traffic["x"]["bytes"] / weights,
            "code_bytes_per_weight": kernel.traffic["weight"]["bytes"] / weights,
            "table_bytes_per_weight": kernel.traffic[table]["bytes"] / weights,
            "loads_per_output": loads / outputs, "simd_ops_per_output": kernel.simd_ops / outputs}


def traffic_table(rows_values: list[int], rng) -> list[dict]:
    """The emulator's traffic of every kernel format, shape and rows value up to MAX_X_ROWS, printed."""
    results = []
    print(f"\nMetal kernels in the CPU emulator, float16 activations: bytes read per weight, loads and simd "
          f"ops per output\n{'shape':<18} {'M':>4} {'format':<8} {'x B/w':>7} {'codes':>7} {'table':>7} "
          f"{'loads/out':>10} {'simd/out':>9}")
    for shape_name, (rows, width) in SHAPES.items():
        for m in [m for m in rows_values if 1 <= m <= MAX_X_ROWS]:
            for fmt in ("lut 2b", "lut 3b", "lut 4b", "ternary"):
                r = {"shape": shape_name, "rows": m, "format": fmt, **emulated_traffic(fmt, rows, width, m, rng)}
                results.append(r)
                print(f"{shape_name:<18} {m:>4} {fmt:<8} {r['x_bytes_per_weight']:>7.3f} "
                      f"{r['code_bytes_per_weight']:>7.3f} {r['table_bytes_per_weight']:>7.4f} "
                      f"{r['loads_per_output']:>10.1f} {r['simd_ops_per_output']:>9.3f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 256], help="activation rows M")
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="the device's memory bandwidth")
    parser.add_argument("--json", default="runs/lowbit_matmul.json")
    args = parser.parse_args()
    on_gpu = mx.metal.is_available()
    activation = mx.float16 if on_gpu else mx.float32
    rng = np.random.default_rng(0)
    device = f"{platform.machine()} {'Metal GPU' if on_gpu else 'CPU'} (mlx {mx.__version__})"
    print(f"device: {device}; activations {activation}; GB/s = stored weight bytes / time per call")
    results = []
    for shape_name, (rows, width) in SHAPES.items():
        products = make_products(rows, width, rng)
        for m in args.rows:
            x = mx.array(rng.standard_normal((m, width)).astype(np.float32)).astype(activation)
            for name, (nbytes, function) in products.items():
                seconds = seconds_per_call(function, x)
                results.append({"shape": shape_name, "rows": m, "format": name, "weight_bytes": nbytes,
                                "ms": seconds * 1e3, "gb_per_s": nbytes / seconds / 1e9,
                                "gflop_per_s": 2 * m * rows * width / seconds / 1e9})
    header = f"{'shape':<18} {'M':>4} {'format':<14} {'MB':>7} {'ms':>9} {'GB/s':>8} {'GFLOP/s':>8}"
    if args.bandwidth_gbs:
        header += f" {'of peak':>8}"
    print(header)
    for r in results:
        line = (f"{r['shape']:<18} {r['rows']:>4} {r['format']:<14} {r['weight_bytes'] / 1e6:>7.2f} "
                f"{r['ms']:>9.3f} {r['gb_per_s']:>8.2f} {r['gflop_per_s']:>8.1f}")
        if args.bandwidth_gbs:
            line += f" {r['gb_per_s'] / args.bandwidth_gbs:>8.1%}"
        print(line)
    report = {"device": device, "results": results}
    if not on_gpu:
        report["emulated_traffic"] = traffic_table(args.rows, rng)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
