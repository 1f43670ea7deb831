"""Pruning and recovery by distillation on SmolLM2-135M, on local text.

    python benchmarks/prune_distill.py [--steps 30] [--rows magnitude-50 wanda-50 ...] [--json runs/prune_distill.json]

Each row prunes the float16 model one way, measures PPL and KL(fp16 || pruned)
on held-out text (Debian fortunes), distills it from the unpruned model for a
fixed budget (``--steps`` x ``--batch-size`` x ``--seq-len`` tokens of the King
James Bible; zeros of unstructured and N:M pruning are kept by masks), and
measures again. Calibration (Wanda, SparseGPT, structured ranking) reads the Bible
text, never the evaluation text. ``width-25`` is the Minitron-style recipe (25% of
MLP channels and one of three KV-head groups removed; see
examples/minitron_smollm2.py for it alone).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx_slm
from mlx_slm.data.corpora import local_text
from mlx_slm.distill import DistillConfig, distill
from mlx_slm.io.atomic import atomic_file
from mlx_slm.prune import count_parameters, prune, prune_structured
from mlx_slm.stats import weight_stats

ROWS = {
    "magnitude-50": ("prune", dict(method="magnitude", sparsity=0.5), {"final": 0.5, "initial": 0.5}),
    "wanda-50": ("prune", dict(method="wanda", sparsity=0.5), {"final": 0.5, "initial": 0.5}),
    "sparsegpt-50": ("prune", dict(method="sparsegpt", sparsity=0.5), {"final": 0.5, "initial": 0.5}),
    "wanda-2:4": ("prune", dict(method="wanda", pattern="2:4"), {"pattern": "2:4"}),
    "width-25": ("structured", dict(mlp_fraction=0.25, drop_heads=1), None),
    "layers-4": ("structured", dict(drop_layers=4), None),
}


def measure(model, tokenizer, reference, text_path, args) -> dict:
    report = mlx_slm.evaluate(model, tokenizer, text=text_path, reference=reference, seq_len=args.eval_seq_len,
                              max_windows=args.eval_windows, decode_tokens=0, progress=False)
    return {"ppl": report["ppl"], "kld": report["kld"], "top1": report["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/smollm2/fp16",
                        help="float16 SmolLM2 folder (made by examples/compress_smollm2.py)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=30, help="distillation steps per row")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--top-k", type=int, default=64, help="teacher logits cached as top-k")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--json", default="runs/prune_distill.json")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"{args.model} is missing: run examples/compress_smollm2.py first (it writes it)")

    eval_text, eval_source = local_text("eval")
    train_text, train_source = local_text("calib")
    work = Path(args.json).with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    eval_path, train_path = work / "eval.txt", work / "train.txt"
    eval_path.write_text(eval_text)
    train_path.write_text(train_text)
    teacher, tokenizer = mlx_slm.load(args.model)
    dense_params = count_parameters(teacher)
    dense_bytes = weight_stats(teacher)["size_bytes"]
    calib = dict(calib=str(train_path), tokenizer=tokenizer, num_samples=args.calib_samples, seq_len=256,
                 progress=False)
    results = []
    for name in args.rows:
        kind, options, masks = ROWS[name]
        start = time.perf_counter()
        student, _ = mlx_slm.load(args.model)
        if kind == "prune":
            prune(student, **options, **({} if options["method"] == "magnitude" else calib))
        else:
            prune_structured(student, **options, **calib)
        before = measure(student, tokenizer, teacher, eval_path, args)
        history = distill(student, teacher, tokenizer, str(train_path), DistillConfig(
            steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, learning_rate=args.learning_rate,
            alpha=0.0, temperature=1.0, teacher_top_k=args.top_k, cache_dir=str(work / "cache"), sparsity=masks),
            progress=False)
        after = measure(student, tokenizer, teacher, eval_path, args)
        row = {"row": name, "parameters": count_parameters(student), "size_bytes": weight_stats(student)["size_bytes"],
               "before": before, "after": after, "distill_tokens": args.steps * args.batch_size * args.seq_len,
               "final_loss": history[-1]["loss"], "seconds": time.perf_counter() - start}
        results.append(row)
        print(f"{name:<14} params {row['parameters'] / 1e6:6.1f}M  PPL {before['ppl']:9.2f} -> {after['ppl']:8.2f}  "
              f"KLD {before['kld']:.3f} -> {after['kld']:.3f}  ({row['seconds']:.0f} s)", flush=True)

    print(f"\nSmolLM2-135M fp16: {dense_params / 1e6:.1f}M parameters, {dense_bytes / 1e6:.1f} MB; "
          f"eval: {eval_source}, "
          f"{args.eval_windows} x {args.eval_seq_len} tokens; distillation: {args.steps} steps x {args.batch_size} x "
          f"{args.seq_len} tokens of {train_source}, teacher top-{args.top_k}")
    print(f"{'row':<14}{'params M':>9}{'MB':>8}{'PPL before':>12}{'PPL after':>11}{'KLD before':>12}{'KLD after':>11}")
    for r in results:
        print(f"{r['row']:<14}{r['parameters'] / 1e6:>9.1f}{r['size_bytes'] / 1e6:>8.1f}{r['before']['ppl']:>12.2f}"
              f"{r['after']['ppl']:>11.2f}{r['before']['kld']:>12.3f}{r['after']['kld']:>11.3f}")
    with atomic_file(args.json) as path:
        path.write_text(json.dumps({"settings": vars(args), "dense_parameters": dense_params, "rows": results},
                                   indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
