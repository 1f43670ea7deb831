"""The main job: SmolLM2-135M from GGUF -> MLX float16 -> 4/3/2-bit -> a quality table.

    python examples/compress_smollm2.py [--out runs/smollm2] [--seq-len 512] [--max-windows 8]

Prints one row per model (PPL, KL to float16, top-1 agreement, bits per weight,
size, speed) and writes the same numbers to OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mlx_slm
from mlx_slm.data.corpora import local_text
from mlx_slm.io.atomic import atomic_file
from mlx_slm.io.packaged import smollm2_gguf

SETTINGS = [(4, 64), (3, 64), (2, 64)]


def table(rows: list[dict]) -> str:
    header = (f"{'model':<12}{'PPL':>13}{'KLD':>9}{'top-1':>8}{'bpw':>7}{'size MB':>9}{'eval tok/s':>11}"
              f"{'decode tok/s':>13}")
    lines = [header, "-" * len(header)]
    for r in rows:
        kld = "-" if r["kld"] is None else f"{r['kld']:.4f}"
        top1 = "-" if r["top1"] is None else f"{r['top1']:.1%}"
        lines.append(f"{r['name']:<12}{r['ppl']:>13.3f}{kld:>9}{top1:>8}{r['bpw']:>7.2f}"
                     f"{r['size_bytes'] / 1e6:>9.1f}{r['eval_tokens_per_s']:>11.1f}{r['tokens_per_s']:>13.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="source model (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--out", default="runs/smollm2", help="output folder for models and report.json")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=8)
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()

    text, source = local_text("eval")
    text_path = out / "eval_text.txt"
    out.mkdir(parents=True, exist_ok=True)
    text_path.write_text(text)
    print(f"evaluation text: {source}")

    try:
        model_path = args.model or smollm2_gguf()
    except mlx_slm.SLMError as err:
        sys.exit(f"{err}")
    model, tokenizer = mlx_slm.load(model_path)
    mlx_slm.save(model, tokenizer, out / "fp16", overwrite=True)
    reference, _ = mlx_slm.load(out / "fp16")
    evaluate = dict(text=text_path, seq_len=args.seq_len, max_windows=args.max_windows, progress=False)
    rows = [{"name": "fp16", **mlx_slm.evaluate(reference, tokenizer, **evaluate)}]
    print(table(rows))
    for bits, group_size in SETTINGS:
        name = f"q{bits}g{group_size}"
        quantized, _ = mlx_slm.load(out / "fp16")
        mlx_slm.quantize(quantized, bits=bits, group_size=group_size, progress=False)
        mlx_slm.save(quantized, tokenizer, out / name, overwrite=True)
        rows.append({"name": name, **mlx_slm.evaluate(quantized, tokenizer, reference=reference, **evaluate)})
        print(table(rows).splitlines()[-1])  # the table grows a row at a time; it is printed once

    with atomic_file(out / "report.json") as path:
        path.write_text(json.dumps({"text_source": source, "rows": rows}, indent=2))
    print(f"\nwrote {out / 'report.json'} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
