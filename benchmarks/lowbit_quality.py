"""Quality of the low-bit formats on SmolLM2-135M beside affine at similar bits per weight.

    python benchmarks/lowbit_quality.py [--rows ...] [--qat-steps 40] [--json runs/lowbit_quality.json]

Every row quantizes the float16 model (all linear layers and the tied
embedding), then measures perplexity, KL(fp16 || model) and top-1 agreement on
held-out text (Debian fortunes) with the numpy engine, and the stored bits per
weight. ``imatrix`` rows calibrate on 16 x 256 tokens of the King James Bible.
The ``qat`` row trains a ternary student through fake quantization by
distillation from the float model (``--qat-steps`` steps of 4 x 128 Bible tokens)
before storing it ternary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx_slm
from mlx_slm.data.corpora import local_text
from mlx_slm.io.atomic import atomic_file
from mlx_slm.stats import weight_stats

ROWS = {  # name -> mlx_slm.quantize keyword arguments
    "affine 4/64 rtn": dict(format="affine", bits=4, group_size=64),
    "affine 4/64 imatrix": dict(format="affine", bits=4, group_size=64, method="imatrix"),
    "affine 3/64 imatrix": dict(format="affine", bits=3, group_size=64, method="imatrix"),
    "affine 2/32 imatrix": dict(format="affine", bits=2, group_size=32, method="imatrix"),
    "lut 4 g1 imatrix": dict(format="lut", bits=4, group_size=1, method="imatrix"),
    "lut 4 g8 imatrix": dict(format="lut", bits=4, group_size=8, method="imatrix"),
    "lut 4 g8 rtn": dict(format="lut", bits=4, group_size=8),
    "lut 3 g1 imatrix": dict(format="lut", bits=3, group_size=1, method="imatrix"),
    "lut 2 g1 imatrix": dict(format="lut", bits=2, group_size=1, method="imatrix"),
    "ternary row rtn": dict(format="ternary", group_size=0),
    "ternary g64 imatrix": dict(format="ternary", group_size=64, method="imatrix"),
    "ternary_b3 row rtn": dict(format="ternary_b3", group_size=0),
}
QAT_ROW = "ternary row qat"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/smollm2/fp16", help="float16 folder (examples/compress_smollm2.py)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS) + [QAT_ROW], choices=list(ROWS) + [QAT_ROW])
    parser.add_argument("--qat-steps", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--json", default="runs/lowbit_quality.json")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"{args.model} is missing: run examples/compress_smollm2.py first (it writes it)")
    work = Path(args.json).with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    eval_text, eval_source = local_text("eval")
    calib_text, calib_source = local_text("calib")
    (work / "eval.txt").write_text(eval_text)
    (work / "calib.txt").write_text(calib_text)
    reference, tokenizer = mlx_slm.load(args.model, backend="numpy")
    measure = dict(text=work / "eval.txt", seq_len=args.seq_len, max_windows=args.max_windows, decode_tokens=0,
                   progress=False)
    rows = [{"row": "fp16", **mlx_slm.evaluate(reference, tokenizer, **measure)}]
    for name in args.rows:
        start = time.perf_counter()
        if name == QAT_ROW:
            model = qat_ternary(args, work, tokenizer)
        else:
            model, _ = mlx_slm.load(args.model, backend="numpy")
            options = ROWS[name]
            calibration = ({"calib": str(work / "calib.txt"), "tokenizer": tokenizer, "num_samples": 16, "seq_len": 256}
                           if options.get("method") == "imatrix" else {})
            mlx_slm.quantize(model, progress=False, **options, **calibration)
        seconds = time.perf_counter() - start
        report = mlx_slm.evaluate(model, tokenizer, reference=reference, **measure)
        rows.append({"row": name, "seconds": seconds, **report, "bpw": weight_stats(model)["bpw"]})
        r = rows[-1]
        print(f"{name:<22} bpw {r['bpw']:5.2f}  PPL {r['ppl']:12.2f}  KL {r['kld']:7.4f}  top-1 {r['top1']:6.1%}  "
              f"({seconds:.0f} s)", flush=True)
    print(f"\nSmolLM2-135M; eval {eval_source}, {args.max_windows} x {args.seq_len} tokens; calibration {calib_source}")
    print(f"{'row':<22}{'bpw':>6}{'PPL':>13}{'KLD':>9}{'top-1':>8}")
    for r in rows:
        kld = "-" if r.get("kld") is None else f"{r['kld']:.4f}"
        top1 = "-" if r.get("top1") is None else f"{r['top1']:.1%}"
        print(f"{r['row']:<22}{r['bpw']:>6.2f}{r['ppl']:>13.2f}{kld:>9}{top1:>8}")
    with atomic_file(args.json) as path:
        path.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1, default=str))
    print(f"wrote {args.json}")


def qat_ternary(args, work: Path, tokenizer):
    """Distill a ternary-fake-quantized student from the float model, then store it ternary."""
    from mlx_slm.distill import DistillConfig, distill

    teacher, _ = mlx_slm.load(args.model)
    student, _ = mlx_slm.load(args.model)
    distill(student, teacher, tokenizer, str(work / "calib.txt"), DistillConfig(
        steps=args.qat_steps, batch_size=4, seq_len=128, learning_rate=1e-4, alpha=0.0, temperature=1.0,
        teacher_top_k=64, cache_dir=str(work / "cache"), qat={"format": "ternary", "group_size": 0}), progress=False)
    return mlx_slm.quantize(student, format="ternary", group_size=0, progress=False)


if __name__ == "__main__":
    main()
