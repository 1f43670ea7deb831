"""Matmul throughput per weight format on the device at hand: GB/s of stored weight bytes read.

    python benchmarks/lowbit_matmul.py [--rows 1 8 256] [--json runs/lowbit_matmul.json]

Shapes are SmolLM2-135M's (attention 576x576, MLP 1536x576 and 576x1536, the
tied 49152x576 head). Formats: fp16 and fp32 ``x @ W.T``, ``mx.quantized_matmul``
(affine 4-bit g64), and our ``lut`` (2/3/4-bit, 8 rows per palette) and
``ternary`` (per-row scale) products from ``mlx_slm.kernels.ops`` -- on a Metal GPU
the custom kernels for up to 8 activation rows, elsewhere MLX ops that
dequantize and multiply. Activations are float32 on a CPU and float16 on a GPU.
On a Mac the table adds the share of the chip's memory bandwidth
(``--bandwidth-gbs``, e.g. 100 for an M1/M2, 120 for an M3/M4, 273 for an M4 Pro).
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
from mlx_slm.kernels.ops import lut_matmul, ternary_matmul

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
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
