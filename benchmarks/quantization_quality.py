"""Quality of the quantization methods on SmolLM2-135M: method x bits -> bpw, PPL, KL, top-1, time, memory.

    python benchmarks/quantization_quality.py [--out runs/quality] [--methods rtn,imatrix,gptq]
        [--bits 4,3,2] [--group-size 64] [--num-samples 32] [--calib-seq-len 256]
        [--seq-len 512] [--max-windows 8]

Calibration text: Debian's bible-kjv (``local_text("calib")``); evaluation text:
Debian's fortunes (``local_text("eval")``), so the two never overlap. KL is the
mean per-token KL(fp16 || model), top-1 the argmax agreement with fp16. "quant s"
is the wall time of ``mlx_slm.quantize``; "peak MB" the highest resident memory
the process reached above its level before quantizing (sampled every 20 ms).
Prints one table and writes OUT/quality.json. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import mlx_slm
from mlx_slm.io.atomic import atomic_file
from mlx_slm.textdata import local_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from compress_smollm2 import default_model


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the starting level while the ``with`` block runs (Linux)."""

    def __enter__(self):
        self.start = self.peak = resident_bytes()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while self.running:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def grown_bytes(self) -> int:
        return self.peak - self.start


def table(rows: list[dict]) -> str:
    header = (f"{'method':<9}{'bits':>5}{'group':>6}{'bpw':>7}{'PPL':>12}{'KL':>9}{'top-1':>8}"
              f"{'quant s':>9}{'peak MB':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        kld = "-" if r["kld"] is None else f"{r['kld']:.4f}"
        top1 = "-" if r["top1"] is None else f"{r['top1']:.1%}"
        quant_s = "-" if r["quant_seconds"] is None else f"{r['quant_seconds']:.0f}"
        peak = "-" if r["quant_peak_mb"] is None else f"{r['quant_peak_mb']:.0f}"
        lines.append(f"{r['method']:<9}{r['bits'] or '-':>5}{r['group_size'] or '-':>6}{r['bpw']:>7.2f}"
                     f"{r['ppl']:>12.3f}{kld:>9}{top1:>8}{quant_s:>9}{peak:>9}")
    return "\n".join(lines)


def source_folder(out: Path, model_arg) -> Path:
    """A float16 MLX folder of the model (converted from the GGUF once)."""
    if model_arg and Path(model_arg).is_dir():
        return Path(model_arg)
    folder = out / "fp16"
    if not (folder / "config.json").is_file():
        model, tokenizer = mlx_slm.load(model_arg or default_model(), progress=False)
        mlx_slm.save(model, tokenizer, folder, overwrite=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="float model folder or .gguf (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--methods", default="rtn,imatrix,gptq")
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per evaluation window")
    parser.add_argument("--max-windows", type=int, default=8, help="evaluation windows")
    parser.add_argument("--backend", choices=("mlx", "numpy"), default=None)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    texts = {}
    for purpose in ("calib", "eval"):
        text, source = local_text(purpose)
        (out / f"{purpose}.txt").write_text(text)
        texts[purpose] = source
    print(f"calibration text: {texts['calib']}; evaluation text: {texts['eval']}")

    folder = source_folder(out, args.model)
    reference, tokenizer = mlx_slm.load(folder, backend=args.backend)
    evaluate = {"text": out / "eval.txt", "seq_len": args.seq_len, "max_windows": args.max_windows,
                "decode_tokens": 0, "progress": False}
    base = {"method": "fp16", "bits": None, "group_size": None, "quant_seconds": None, "quant_peak_mb": None}
    rows = [{**base, **mlx_slm.evaluate(reference, tokenizer, **evaluate)}]
    print(table(rows))
    for bits in [int(b) for b in args.bits.split(",")]:
        for method in args.methods.split(","):
            model, _ = mlx_slm.load(folder, backend=args.backend)
            began = time.perf_counter()
            with PeakMemory() as memory:
                mlx_slm.quantize(model, bits=bits, group_size=args.group_size, method=method,
                                 calib=out / "calib.txt", tokenizer=tokenizer, num_samples=args.num_samples,
                                 seq_len=args.calib_seq_len, progress=False)
            seconds = time.perf_counter() - began
            report = mlx_slm.evaluate(model, tokenizer, reference=reference, **evaluate)
            rows.append({"method": method, "bits": bits, "group_size": args.group_size, "quant_seconds": seconds,
                         "quant_peak_mb": memory.grown_bytes / 1e6, **report})
            print(table(rows).splitlines()[-1], flush=True)

    print()
    print(table(rows))
    settings = {k: getattr(args, k) for k in ("num_samples", "calib_seq_len", "seq_len", "max_windows", "group_size")}
    with atomic_file(out / "quality.json") as path:
        path.write_text(json.dumps({"texts": texts, "settings": settings, "rows": rows}, indent=2))
    print(f"\nwrote {out / 'quality.json'} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
