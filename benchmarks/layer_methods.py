"""Time the per-layer algorithms of calibrated quantization and pruning on numpy and on MLX's default device.

The algorithms are written once over an engine's array operations (:mod:`mlx_slm.quant.gptq`,
:mod:`mlx_slm.prune.sparsegpt`, :mod:`mlx_slm.quant.imatrix`, :mod:`mlx_slm.quant.refit`,
:mod:`mlx_slm.quant.awq`, :mod:`mlx_slm.prune.wanda`); this times each on both libraries for
SmolLM2-135M's layer shapes N x K (576 x 576: q/o, 1536 x 576: gate/up, 576 x 1536: down), random
weights and the Hessian of random correlated inputs, its factor computed once beforehand (as
calibration shares it). GPTQ's column sweep: 4 bits, group 64, act-order; SparseGPT's: 50%
unstructured and 2:4; imatrix's grid search and the refit: 4 bits, group 64; AWQ: the error of 5
alphas; Wanda: 50%. Reports the median of ``--repeat`` runs and the share of equal results (codes,
masks, chosen scales and biases, errors within 1e-3), prints a table and writes JSON. What it
measures decides :meth:`mlx_slm.calib.mlx_engine.MLXArrays.for_methods`.

    OPENBLAS_NUM_THREADS=1 python benchmarks/layer_methods.py [--repeat 5] [--json runs/layer_methods.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mlx_slm  # noqa: F401  (fast BLAS for MLX on Linux: before mlx)

# isort: split
import mlx.core as mx
import numpy as np

from mlx_slm.calib.hessian import inverse_hessian_factor, prepare_hessian
from mlx_slm.calib.mlx_engine import MLXArrays
from mlx_slm.calib.statistics import NumpyArrays
from mlx_slm.formats import affine
from mlx_slm.prune.sparsegpt import sparsegpt_prune
from mlx_slm.prune.wanda import wanda_mask
from mlx_slm.quant.awq import search_scales
from mlx_slm.quant.gptq import quantize_columns
from mlx_slm.quant.imatrix import weighted_quantize
from mlx_slm.quant.refit import refit_grid

SHAPES = [(576, 576), (1536, 576), (576, 1536)]
LIBRARIES = {"numpy": NumpyArrays, "mlx": MLXArrays}
BITS, GROUP = 4, 64


def layer(n: int, k: int, seed: int = 0):
    """(weights float32 [N, K], Hessian E[x x^T] float32 [K, K] of 4K correlated random inputs)."""
    rng = np.random.default_rng(seed)
    mixing = (np.eye(k) + 0.1 * rng.standard_normal((k, k))).astype(np.float32)
    x = rng.standard_normal((4 * k, k)).astype(np.float32) @ mixing
    return (0.02 * rng.standard_normal((n, k))).astype(np.float32), x.T @ x / len(x)


def gptq_sweep(w: np.ndarray, hessian: np.ndarray):
    """A function running GPTQ's sweep on given array operations (its inputs prepared as gptq_quantize does)."""
    _, scales, biases = affine.quantize_codes(w, BITS, GROUP)
    order, factor = prepare_hessian(hessian, 0.01, act_order=True)
    inputs = (scales.T, biases.T, order // GROUP, factor, (1 << BITS) - 1, 32)
    return lambda arrays: quantize_columns(arrays, w.T[order], *inputs)  # numpy's sweep updates its columns


def sparsegpt_sweep(w: np.ndarray, hessian: np.ndarray, **target):
    factor = inverse_hessian_factor(hessian, 0.01)
    return lambda arrays: sparsegpt_prune(w, hessian, factor=factor, arrays=arrays, **target)[1]


def imatrix_search(w: np.ndarray, hessian: np.ndarray):
    return lambda arrays: np.concatenate([a.reshape(len(w), -1).astype(np.float32) for a in
                                          weighted_quantize(w, np.diag(hessian), BITS, GROUP, np.float16, arrays)], 1)


def refit(w: np.ndarray, hessian: np.ndarray):
    q, scales, biases = affine.quantize_codes(w.astype(np.float16), BITS, GROUP)
    return lambda arrays: np.concatenate(refit_grid(w, q, scales, biases, hessian, GROUP, arrays=arrays), 1)


def awq_search(w: np.ndarray, hessian: np.ndarray):
    layers = [(w, {"bits": BITS, "group_size": GROUP}, np.float16)]
    return lambda arrays: np.round(search_scales(layers, np.diag(hessian), hessian, 5, arrays)[2], 3)


def wanda(w: np.ndarray, hessian: np.ndarray):
    return lambda arrays: wanda_mask(w, np.diag(hessian), sparsity=0.5, arrays=arrays)


def equal_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal entries (float results: equal within a relative 1e-3)."""
    if np.issubdtype(np.asarray(a).dtype, np.floating):
        return float(np.mean(np.isclose(a, b, rtol=1e-3, atol=0)))
    return float(np.mean(a == b))


def median_seconds(run, arrays, repeat: int):
    result = run(arrays)  # warm-up (and MLX's first-call setup)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(arrays)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default="runs/layer_methods.json")
    args = parser.parse_args()
    device = str(mx.default_device())
    rows = []
    for n, k in SHAPES:
        w, hessian = layer(n, k)
        sweeps = {"gptq 4-bit g64": gptq_sweep(w, hessian),
                  "sparsegpt 50%": sparsegpt_sweep(w, hessian, sparsity=0.5),
                  "sparsegpt 2:4": sparsegpt_sweep(w, hessian, pattern=(2, 4)),
                  "imatrix 4-bit": imatrix_search(w, hessian), "refit 4-bit": refit(w, hessian),
                  "awq 5 alphas": awq_search(w, hessian), "wanda 50%": wanda(w, hessian)}
        for name, run in sweeps.items():
            seconds, results = {}, {}
            for library, arrays in LIBRARIES.items():
                seconds[library], results[library] = median_seconds(run, arrays, args.repeat)
            rows.append({"algorithm": name, "n": n, "k": k, "numpy_s": seconds["numpy"], "mlx_s": seconds["mlx"],
                         "equal": equal_share(results["numpy"], results["mlx"])})
            print(f"{name:15s} {n:5d} x {k:<5d} numpy {seconds['numpy']*1e3:7.1f} ms   mlx ({device}) "
                  f"{seconds['mlx']*1e3:7.1f} ms   mlx/numpy {seconds['mlx']/seconds['numpy']:5.2f}   "
                  f"equal {rows[-1]['equal']:.4f}", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "repeat": args.repeat, "results": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
