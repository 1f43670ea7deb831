"""QLoRA on SmolLM2-135M, then fuse into the quantized base: GPTQ re-quantization vs mlx-lm's RTN.

    python benchmarks/lora_fuse.py [--out runs/lora_fuse] [--bits 4,3] [--group-size 64] [--steps 200]
        [--batch-size 4] [--train-seq-len 128] [--learning-rate 2e-4] [--num-samples 32]
        [--calib-seq-len 256] [--seq-len 256] [--max-windows 8]

For each bit width: quantize the float16 model (affine RTN), train LoRA adapters on it
(rank 8, every linear layer of every block) on 80% of Debian's fortunes as JSONL text
records, then fuse the adapters three ways: keep the fused layers in float ("none"),
re-quantize with round-to-nearest as ``mlx_lm.fuse`` does ("rtn"), and with GPTQ
calibrated on the training JSONL ("gptq"). Rows: PPL on the held-out 20% of fortunes
and KL(unfused adapter model || row) per token; "s" is the fine-tuning or fusing time.
Every model runs on the MLX engine in float32 (quantized layers dequantized exactly).
Prints one table and writes OUT/lora_fuse.json. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx_slm
from mlx_slm.data.corpora import local_text
from mlx_slm.finetune import finetune, fuse, load_adapters
from mlx_slm.io.atomic import atomic_file
from mlx_slm.io.packaged import smollm2_gguf


def fortune_records(text: str, chars: int = 600) -> list[str]:
    """Fortunes (separated by lines holding "%") packed into pieces of about ``chars`` characters."""
    pieces, current = [], ""
    for fortune in (f.strip() for f in text.split("\n%\n")):
        if fortune:
            current = f"{current}\n\n{fortune}" if current else fortune
            if len(current) >= chars:
                pieces.append(current)
                current = ""
    return pieces


def table(rows: list[dict]) -> str:
    header = f"{'bits':>4}  {'model':<22}{'PPL':>10}{'KL(unfused||.)':>16}{'s':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        kld = "-" if r["kld"] is None else f"{r['kld']:.4f}"
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"{r['bits']:>4}  {r['model']:<22}{r['ppl']:>10.3f}{kld:>16}{seconds:>7}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="float model folder or .gguf (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--out", default="runs/lora_fuse")
    parser.add_argument("--bits", default="4,3")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-seq-len", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--num-samples", type=int, default=32, help="GPTQ calibration windows")
    parser.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per evaluation window")
    parser.add_argument("--max-windows", type=int, default=8, help="evaluation windows")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    text, source = local_text("eval")
    records = fortune_records(text)
    cut = int(0.8 * len(records))
    train = out / "train.jsonl"
    train.write_text("".join(json.dumps({"text": r}) + "\n" for r in records[:cut]))
    (out / "heldout.txt").write_text("\n\n".join(records[cut:]))
    print(f"training data: {cut} records of {source}; held out: {len(records) - cut} records")

    folder = out / "fp16"
    if not (folder / "config.json").is_file():
        model, tokenizer = mlx_slm.load(args.model or smollm2_gguf(), progress=False)
        mlx_slm.save(model, tokenizer, folder, overwrite=True)
    evaluate = {"text": out / "heldout.txt", "seq_len": args.seq_len, "max_windows": args.max_windows,
                "decode_tokens": 0, "progress": False, "cpu_engine": "mlx"}
    rows = []

    def add(bits, name, model, tokenizer, reference, seconds):
        report = mlx_slm.evaluate(model, tokenizer, reference=reference, **evaluate)
        rows.append({"bits": bits, "model": name, "seconds": seconds, **report})
        print(table(rows).splitlines()[-1], flush=True)

    for bits in [int(b) for b in args.bits.split(",")]:
        quantized = out / f"q{bits}g{args.group_size}"
        if not (quantized / "config.json").is_file():
            model, tokenizer = mlx_slm.load(folder, progress=False)
            mlx_slm.quantize(model, bits=bits, group_size=args.group_size, progress=False)
            mlx_slm.save(model, tokenizer, quantized, overwrite=True)
        unfused, tokenizer = mlx_slm.load(quantized, progress=False)
        add(bits, "quantized base", unfused, tokenizer, None, None)
        adapters = out / f"adapters-q{bits}"
        began = time.perf_counter()
        history = finetune(unfused, tokenizer, train, steps=args.steps, batch_size=args.batch_size,
                           seq_len=args.train_seq_len, learning_rate=args.learning_rate, adapter_dir=adapters,
                           overwrite=True, save_every=0)
        add(bits, f"LoRA unfused ({args.steps} st)", unfused, tokenizer, None, time.perf_counter() - began)
        rows[-1]["train_loss_first_last"] = [history[0]["loss"], history[-1]["loss"]]
        for requantize in (None, "rtn", "gptq"):
            model, _ = mlx_slm.load(quantized, progress=False)
            load_adapters(model, adapters)
            began = time.perf_counter()
            fuse(model, requantize=requantize, calib=train, tokenizer=tokenizer, num_samples=args.num_samples,
                 seq_len=args.calib_seq_len, progress=False)
            add(bits, f"fused, {requantize or 'none (float)'}", model, tokenizer, unfused,
                time.perf_counter() - began)

    print()
    print(table(rows))
    settings = {k: getattr(args, k) for k in ("group_size", "steps", "batch_size", "train_seq_len", "learning_rate",
                                              "num_samples", "calib_seq_len", "seq_len", "max_windows")}
    with atomic_file(out / "lora_fuse.json") as path:
        path.write_text(json.dumps({"text": source, "settings": settings, "rows": rows}, indent=2))
    print(f"\nwrote {out / 'lora_fuse.json'} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
