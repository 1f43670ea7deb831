"""Evaluation and decode throughput on this machine: mlx_slm vs stock mlx-lm.

    python benchmarks/cpu_speed.py [--out runs/cpu_speed] [--decode-tokens 8]

For SmolLM2-135M at float16 and at 4-bit (group 64) it times, in one run:
- stock mlx-lm, in a fresh interpreter that imports only mlx_lm (as a user runs it):
  one forward pass over a window (evaluation) and `stream_generate` (decode);
- mlx_slm's `evaluate` on the same window length (its CPU engine), and the MLX
  engine with OpenBLAS preloaded for reference.
Stock 4-bit runs at well under one token per second on a Linux CPU, so its
window is short (``--quantized-window``). Prints a table, writes OUT/cpu_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import mlx_slm
from mlx_slm import _blas
from mlx_slm.data.corpora import local_text
from mlx_slm.io.atomic import atomic_file
from mlx_slm.io.packaged import smollm2_gguf

STOCK = r"""
import json, sys, time
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import stream_generate
path, window, decode_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, tokenizer = load(path)
ids = tokenizer.encode(open(sys.argv[4]).read())[:window]
x = mx.array(ids)[None]
mx.eval(model(x[:, :2]))
start = time.perf_counter()
mx.eval(model(x))
eval_tps = window / (time.perf_counter() - start)
for response in stream_generate(model, tokenizer, "The capital of France is", max_tokens=decode_tokens):
    pass
print(json.dumps({"eval_tokens_per_s": eval_tps, "tokens_per_s": response.generation_tps}))
"""


def stock(path: Path, window: int, decode_tokens: int, text: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", STOCK, str(path), str(window), str(decode_tokens), str(text)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def ours(path: Path, window: int, decode_tokens: int, text: Path, engine: str | None, windows: int) -> dict:
    model, tokenizer = mlx_slm.load(path)
    report = mlx_slm.evaluate(model, tokenizer, text, seq_len=window, max_windows=windows,
                              decode_tokens=decode_tokens, progress=False, cpu_engine=engine)
    return {k: report[k] for k in ("eval_tokens_per_s", "tokens_per_s", "engine")}


def prepare(out: Path) -> dict[str, Path]:
    paths = {"fp16": out / "fp16", "4-bit g64": out / "q4g64"}
    if not (paths["fp16"] / "config.json").is_file():
        model, tokenizer = mlx_slm.load(smollm2_gguf(), progress=False)
        mlx_slm.save(model, tokenizer, paths["fp16"], overwrite=True)
    if not (paths["4-bit g64"] / "config.json").is_file():
        model, tokenizer = mlx_slm.load(paths["fp16"])
        mlx_slm.quantize(model, bits=4, group_size=64, progress=False)
        mlx_slm.save(model, tokenizer, paths["4-bit g64"], overwrite=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/cpu_speed")
    parser.add_argument("--float-window", type=int, default=256, help="tokens per evaluation window, fp16")
    parser.add_argument("--quantized-window", type=int, default=16, help="tokens per window, 4-bit")
    parser.add_argument("--decode-tokens", type=int, default=8)
    parser.add_argument("--windows", type=int, default=2, help="windows mlx_slm averages over")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = out / "text.txt"
    text.write_text(local_text("eval")[0])
    paths = prepare(out)
    rows = []
    for name, path in paths.items():
        window = args.float_window if name == "fp16" else args.quantized_window
        start = time.perf_counter()
        row = {"model": name, "window": window,
               "stock": stock(path, window, args.decode_tokens, text),
               "mlx_slm": ours(path, window, args.decode_tokens, text, None, args.windows),
               "mlx_slm_mlx_engine": ours(path, window, args.decode_tokens, text, "mlx", args.windows)}
        row["eval_speedup"] = row["mlx_slm"]["eval_tokens_per_s"] / row["stock"]["eval_tokens_per_s"]
        row["decode_speedup"] = row["mlx_slm"]["tokens_per_s"] / row["stock"]["tokens_per_s"]
        row["seconds"] = time.perf_counter() - start
        rows.append(row)

    print(f"machine: {platform.machine()} {platform.system()}, MLX engine BLAS: {_blas.describe()}")
    header = (f"{'model':<10}{'window':>7} | {'eval tok/s: stock':>18}{'mlx_slm':>9}{'(mlx eng.)':>11}{'x':>7} | "
              f"{'decode tok/s: stock':>20}{'mlx_slm':>9}{'(mlx eng.)':>11}{'x':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        s, o, m = r["stock"], r["mlx_slm"], r["mlx_slm_mlx_engine"]
        print(f"{r['model']:<10}{r['window']:>7} | {s['eval_tokens_per_s']:>18.2f}{o['eval_tokens_per_s']:>9.1f}"
              f"{m['eval_tokens_per_s']:>11.1f}{r['eval_speedup']:>7.0f} | {s['tokens_per_s']:>20.2f}"
              f"{o['tokens_per_s']:>9.1f}{m['tokens_per_s']:>11.1f}{r['decode_speedup']:>7.0f}")
    with atomic_file(out / "cpu_speed.json") as path:
        path.write_text(json.dumps({"blas": _blas.describe(), "rows": rows}, indent=2))
    print(f"wrote {out / 'cpu_speed.json'}")


if __name__ == "__main__":
    main()
