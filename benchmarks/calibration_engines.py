"""Time the block-by-block calibration pass on both engines: the numpy engine and mlx-lm's blocks on MLX.

One pass of :func:`mlx_slm.calib.blocks.calibrate_blocks` gathering every block layer's Gram matrix
and mean squares (what gptq and awq read) over the calibration windows, once per engine and
``--repeat`` times alternately, on an MLX model (default SmolLM2-135M, from PyPI). Prints wall and
CPU seconds per run; on a shared machine the CPU seconds are the fairer comparison, and with
``OPENBLAS_NUM_THREADS=1`` neither engine loses time to BLAS threads waiting for a busy core.

    OPENBLAS_NUM_THREADS=1 python benchmarks/calibration_engines.py --num-samples 8 --seq-len 256
"""

from __future__ import annotations

import argparse
import time

import mlx_slm
from mlx_slm.calib.blocks import calibrate_blocks
from mlx_slm.data.corpora import local_text
from mlx_slm.data.windows import Calibration
from mlx_slm.io.packaged import smollm2_gguf
from mlx_slm.model_access import access


def time_pass(source, engine_name: str, num_samples: int, seq_len: int) -> tuple[float, float]:
    """(wall s, CPU s) of one calibration pass of ``engine_name`` over a freshly loaded model."""
    model, tokenizer = mlx_slm.load(source, backend="mlx", progress=False)
    tokens, _ = Calibration([local_text("calib")[0]], tokenizer, num_samples, seq_len).windows()
    view = access(model)
    engine = view.calibration_engine(engine_name)
    names = [path for path in view.candidate_layers() if path.startswith("model.layers.")]
    wall, cpu = time.perf_counter(), time.process_time()
    calibrate_blocks(engine, names, tokens, True, lambda block_names, stats: None, engine_name, progress=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder, Hub id or .gguf (default SmolLM2-135M)")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    source = args.model or smollm2_gguf()
    for _ in range(args.repeat):
        for engine_name in ("numpy", "mlx"):
            wall, cpu = time_pass(source, engine_name, args.num_samples, args.seq_len)
            print(f"{engine_name:5s} {args.num_samples} x {args.seq_len} tokens: {wall:7.1f} s wall {cpu:7.1f} s CPU",
                  flush=True)


if __name__ == "__main__":
    main()
