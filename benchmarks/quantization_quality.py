"""Quality of the quantization methods on SmolLM2-135M: method x bits -> bpw, PPL, KL, top-1, time, memory.

    python benchmarks/quantization_quality.py [--out runs/quality]
        [--methods rtn,imatrix,gptq,awq,learned] [--bits 4,3,2] [--group-size 64]
        [--targets 4.5,3.5,3.0,2.5] [--plan-method gptq] [--learned-start gptq]
        [--learned-steps 200] [--learned-lr LR] [--learned-eval-every 10]
        [--num-samples 32] [--calib-seq-len 256] [--seq-len 512] [--max-windows 8] [--resume]
        [--baselines runs/baselines/mlx_lm.json | --mlx-lm rtn,gptq,dynamic,awq,dwq]

Calibration text: Debian's bible-kjv (``local_text("calib")``); evaluation text:
Debian's fortunes (``local_text("eval")``), so the two never overlap. Every
method runs at every ``--bits``; each ``--targets`` budget is planned by the
mixed-precision planner (``target_bpw``) and quantized with ``--plan-method``; the
layer sensitivities are measured once for all budgets and their time is added to each
budget's "quant s".
KL is the mean per-token KL(fp16 || model), top-1 the argmax agreement with fp16;
bpw counts every stored bit of the matrices, and "float" is the number of
matrices left unquantized (e.g. group 128 does not divide SmolLM2's 576 columns).
"quant s" is the wall time of ``mlx_slm.quantize``; "peak MB" the highest
resident memory the process reached above its level before quantizing (sampled
every 20 ms). Prints one table, writes OUT/quality.json and, with matplotlib
(the ``bench`` extra), OUT/quality.png: KL vs bpw with the Pareto front of each
tool. mlx-lm's rows (``--baselines``, written by benchmarks/mlx_lm_baselines.py on the
same texts, or ``--mlx-lm METHODS``: run that script here, after our rows) are appended to
the table and the plot. Each row is saved as soon as it is
measured; ``--resume`` keeps the rows of an earlier run with the same settings and
measures only the missing ones. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from _common import PeakMemory, earlier_rows, quality_table, source_folder, write_texts

import mlx_slm
from mlx_slm.io.atomic import atomic_file
from mlx_slm.model_access import model_config


def runs(args) -> list[tuple[str, int | None, dict]]:
    """(label, bits, quantize keyword arguments) of every configuration to measure; a budget's
    arguments carry ``target_bpw``, which :func:`measure` turns into a planned config."""
    chosen = []
    for bits in [int(b) for b in args.bits.split(",") if b]:
        for method in [m for m in args.methods.split(",") if m]:
            options = {"method": method, "bits": bits}
            label = method
            if method == "learned":
                options["learned_options"] = {"start": args.learned_start, "steps": args.learned_steps,
                                              "eval_every": args.learned_eval_every}
                if args.learned_lr is not None:
                    options["learned_options"]["learning_rate"] = args.learned_lr
                label = f"learned({args.learned_start},{args.learned_steps})"
            chosen.append((label, bits, options))
    for target in [float(t) for t in args.targets.split(",") if t]:
        chosen.append((f"{args.plan_method} @{target:g}", None,
                       {"method": args.plan_method, "target_bpw": target, "bits": 4}))
    return chosen


class Planner:
    """Plans every budget from one sensitivity measurement of the float model (made on first use)."""

    def __init__(self, folder: Path, tokenizer, args):
        self.folder, self.tokenizer, self.args = folder, tokenizer, args
        self.sensitivity = None

    def config(self, target_bpw: float) -> tuple[dict, dict]:
        """(per-layer config, plan report) for ``target_bpw``, as ``quantize(target_bpw=...)`` plans it."""
        from mlx_slm.data.windows import calibration_windows
        from mlx_slm.quant.budget import plan_for_budget
        from mlx_slm.quant.sensitivity import measure_sensitivity
        from mlx_slm.quantize import sensitivity_windows

        if self.sensitivity is None:
            model, _ = mlx_slm.load(self.folder, backend=self.args.backend)
            windows = sensitivity_windows(self.args.num_samples, self.args.calib_seq_len)
            tokens, _ = calibration_windows(self.tokenizer, Path(self.args.out) / "calib.txt", *windows)
            self.sensitivity = measure_sensitivity(model, tokens, progress=False)
        return plan_for_budget(self.sensitivity, target_bpw)


def measure(folder: Path, reference, tokenizer, label: str, bits, options: dict, args, evaluate: dict,
            planner: Planner) -> dict:
    """Quantize a fresh copy of the model with ``options``, evaluate it against ``reference``."""
    options, plan_seconds, plan = dict(options), 0.0, None
    if "target_bpw" in options:
        options["config"], plan = planner.config(options.pop("target_bpw"))
        plan_seconds = plan["sensitivity_seconds"]
    model, _ = mlx_slm.load(folder, backend=args.backend)
    began = time.perf_counter()
    with PeakMemory() as memory:
        mlx_slm.quantize(model, group_size=args.group_size, calib=Path(args.out) / "calib.txt", tokenizer=tokenizer,
                         num_samples=args.num_samples, seq_len=args.calib_seq_len, progress=False, **options)
    seconds = time.perf_counter() - began + plan_seconds
    record = model_config(model).get("mlx_slm") or {}
    record = {k: v for k, v in record.items() if k != "unquantized"}
    if plan is not None:
        record["plan"] = {k: v for k, v in plan.items() if k != "layers"}
        record["plan"]["choices"] = dict(Counter(row["choice"] for row in plan["layers"]))
    report = mlx_slm.evaluate(model, tokenizer, reference=reference, **evaluate)
    return {"method": label, "bits": bits, "group_size": args.group_size, "quant_seconds": seconds,
            "quant_peak_mb": memory.grown_bytes / 1e6,
            "float_layers": len((model_config(model).get("mlx_slm") or {}).get("unquantized", {})),
            "record": record, **report}


def baseline_rows(path: Path) -> list[dict]:
    """mlx-lm's rows from benchmarks/mlx_lm_baselines.py's JSON (none if it is missing)."""
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text())["rows"] if r["method"].startswith("mlx-lm")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="float model folder or .gguf (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--methods", default="rtn,imatrix,gptq,awq,learned",
                        help="uniform methods, each run at every --bits (default: %(default)s)")
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--targets", default="4.5,3.5,3.0,2.5",
                        help="bits-per-weight budgets for the mixed-precision planner ('' for none)")
    parser.add_argument("--plan-method", default="gptq", help="method that quantizes the planned layers")
    parser.add_argument("--learned-start", default="gptq", help="what 'learned' starts from (gptq or awq)")
    parser.add_argument("--learned-steps", type=int, default=200, help="most training steps of 'learned'")
    parser.add_argument("--learned-lr", type=float, default=None,
                        help="learning rate of 'learned', relative to each layer's mean scale "
                             "(default: the library's, 3e-5)")
    parser.add_argument("--learned-eval-every", type=int, default=10,
                        help="training steps between held-out evaluations of 'learned'")
    parser.add_argument("--num-samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per evaluation window")
    parser.add_argument("--max-windows", type=int, default=8, help="evaluation windows")
    parser.add_argument("--baselines", default="runs/baselines/mlx_lm.json",
                        help="rows of benchmarks/mlx_lm_baselines.py to plot alongside (skipped if missing)")
    parser.add_argument("--mlx-lm", default="", metavar="METHODS",
                        help="also run these of mlx-lm's quantizers (rtn,gptq,dynamic,awq,dwq) here, through "
                             "benchmarks/mlx_lm_baselines.py with its defaults and this run's --bits, group size, "
                             "texts and evaluation, into OUT/mlx_lm.json, which then replaces --baselines")
    parser.add_argument("--backend", choices=("mlx", "numpy"), default=None)
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of OUT/quality.json measured with the same settings; measure the rest")
    args = parser.parse_args()
    out = Path(args.out)
    settings = {k: getattr(args, k) for k in ("num_samples", "calib_seq_len", "seq_len", "max_windows", "group_size")}
    rows = earlier_rows(out / "quality.json", settings, parser) if args.resume else []
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    texts = write_texts(out)
    print(f"calibration text: {texts['calib']}; evaluation text: {texts['eval']}")

    folder = source_folder(out, args.model)
    reference, tokenizer = mlx_slm.load(folder, backend=args.backend)
    evaluate = {"text": out / "eval.txt", "seq_len": args.seq_len, "max_windows": args.max_windows,
                "decode_tokens": 0, "progress": False}
    done = {(r["method"], r["bits"]) for r in rows}
    if ("fp16", None) not in done:
        base = {"method": "fp16", "bits": None, "group_size": None, "quant_seconds": None, "quant_peak_mb": None}
        rows.insert(0, {**base, **mlx_slm.evaluate(reference, tokenizer, **evaluate)})
    print(quality_table(rows))
    planner = Planner(folder, tokenizer, args)
    for label, bits, options in runs(args):
        if (label, bits) in done:
            continue
        rows.append(measure(folder, reference, tokenizer, label, bits, options, args, evaluate, planner))
        print(quality_table(rows).splitlines()[-1], flush=True)
        with atomic_file(out / "quality.json") as path:
            path.write_text(json.dumps({"texts": texts, "settings": settings, "rows": rows}, indent=2, default=str))

    baselines = Path(args.baselines)
    if args.mlx_lm:
        baselines = run_mlx_lm(out, args)
    print()
    print(quality_table(rows + baseline_rows(baselines)))
    print(f"\nwrote {out / 'quality.json'} ({time.perf_counter() - start:.0f} s in all)")
    plot(out, baselines)


def run_mlx_lm(out: Path, args) -> Path:
    """Run benchmarks/mlx_lm_baselines.py in this process on this run's model, texts and evaluation
    (``--mlx-lm`` methods); returns its JSON, OUT/mlx_lm.json."""
    import mlx_lm_baselines

    print(f"\nmlx-lm's quantizers: {args.mlx_lm}", flush=True)
    mlx_lm_baselines.main(["--out", str(out), "--methods", args.mlx_lm, "--bits", args.bits,
                           "--group-size", str(args.group_size), "--seq-len", str(args.seq_len),
                           "--max-windows", str(args.max_windows)] + (["--model", args.model] if args.model else []))
    return out / "mlx_lm.json"


def plot(out: Path, baselines: Path) -> None:
    """KL vs bpw of our rows and (if present) mlx-lm's, with each tool's Pareto front."""
    try:
        from quality_plot import main as plot_main
    except ImportError as err:  # matplotlib is a benchmark extra
        print(f"no plot: {err} (pip install 'mlx-slm[bench]')")
        return
    sources = [out / "quality.json"] + ([baselines] if baselines.is_file() else [])
    plot_main([str(p) for p in sources] + ["--png", str(out / "quality.png")])


if __name__ == "__main__":
    main()
