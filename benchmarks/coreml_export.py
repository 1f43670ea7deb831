"""Core ML export of SmolLM2-135M: weight format x compute precision -> package size, bpw, export time,
and how closely the saved package (run by coreml/mil_interpreter.py) follows the model.

    python benchmarks/coreml_export.py [--model PATH] [--out runs/coreml] [--formats fp16,q4g64,q3g64]
        [--float32 fp16] [--max-context 64] [--steps 16]

Each format is exported once per compute precision: float16 for every format, float32 too for
the formats listed in --float32. Agreement: prefill of a fixed prompt + --steps greedy steps fed
with the model's token, through the package and through the model's own float32 numpy forward
pass; "tokens" counts the positions whose greedy token is the model's, "max dlogit" is the largest
|package - model| logit over every position. "bpw" is the package's bits per matrix weight (codes,
scales, offsets or lookup tables; from the manifest), "model bpw" the model's own. Prints one table
and writes OUT/coreml_export.json (the packages are deleted once measured). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import package_bpw, package_bytes, quantize_options

import mlx_slm
from mlx_slm.coreml.mil_interpreter import MILInterpreter, compare_greedy
from mlx_slm.io.atomic import atomic_file
from mlx_slm.io.packaged import smollm2_gguf

PROMPT = "The capital of France is"









def measure(model, tokenizer, name: str, precision: str, folder: Path, args) -> dict:
    """Export one package and compare it with ``model``; returns the table row."""
    start = time.perf_counter()
    package = mlx_slm.export_coreml(model, tokenizer, folder / f"{name}-{precision}" / "SmolLM2.mlpackage",
                                    max_context=args.max_context, compute_precision=precision, overwrite=True)
    seconds = time.perf_counter() - start
    prompt = tokenizer.encode(PROMPT)
    package_tokens, model_tokens, delta = compare_greedy(MILInterpreter(package), model, prompt, args.steps)
    row = {"format": name, "compute_precision": precision, "package_mb": package_bytes(package) / 1e6,
           "bpw": package_bpw(package), "model_bpw": mlx_slm.stats.weight_stats(model)["bpw"],
           "export_s": seconds, "tokens_equal": sum(a == b for a, b in zip(package_tokens, model_tokens)),
           "tokens": len(model_tokens), "max_dlogit": delta, "package_tokens": package_tokens,
           "model_tokens": model_tokens}
    shutil.rmtree(package.parent)
    return row


def table(rows: list[dict]) -> str:
    header = (f"{'format':<8}{'compute':>9}{'size MB':>9}{'bpw':>7}{'model bpw':>10}{'export s':>9}"
              f"{'tokens':>8}{'max dlogit':>11}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['format']:<8}{r['compute_precision']:>9}{r['package_mb']:>9.1f}{r['bpw']:>7.2f}"
                     f"{r['model_bpw']:>10.2f}{r['export_s']:>9.1f}{r['tokens_equal']:>5}/{r['tokens']:<2}"
                     f"{r['max_dlogit']:>11.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="source model (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--out", default="runs/coreml", help="output folder for coreml_export.json")
    parser.add_argument("--formats", default="fp16,q4g64,q3g64",
                        help="comma-separated: fp16, q<bits>g<group> (affine), or a name in _common.FORMATS")
    parser.add_argument("--float32", default="fp16", help="formats also exported with compute_precision=float32")
    parser.add_argument("--max-context", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16, help="greedy steps after the prompt")
    args = parser.parse_args()
    formats = [name for name in args.formats.split(",") if name]
    float32 = {name for name in args.float32.split(",") if name}
    out = Path(args.out)
    start = time.perf_counter()

    rows = []
    for name in formats:
        options = quantize_options(name)
        model, tokenizer = mlx_slm.load(args.model or smollm2_gguf(), backend="numpy", progress=False)
        if options is not None:
            mlx_slm.quantize(model, progress=False, **options)
        for precision in ["float16"] + (["float32"] if name in float32 else []):
            rows.append(measure(model, tokenizer, name, precision, out / "packages", args))
            print(table(rows[-1:]).splitlines()[-1], flush=True)

    print()
    print(table(rows))
    settings = {"model": str(args.model or smollm2_gguf()), "prompt": PROMPT, "steps": args.steps,
                "max_context": args.max_context, "reference": "the model's float32 numpy forward pass"}
    with atomic_file(out / "coreml_export.json") as path:
        path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"\nwrote {out / 'coreml_export.json'} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
