"""mlx-lm's own quantizers on SmolLM2-135M, calibrated on the same local text as ours.

    python benchmarks/mlx_lm_baselines.py [--out runs/baselines]
        [--methods rtn,gptq,dynamic,awq,dwq] [--bits 4,3,2] [--group-size 64]
        [--dynamic 4.5:3:5,3.5:2:4,3.0:2:4] [--num-samples 8] [--calib-seq-len 128]
        [--awq-grid 5] [--dwq-samples 8] [--dwq-valid 4] [--dwq-batch-size 4] [--dwq-lr 1e-5]
        [--compute-dtype float32] [--seq-len 512] [--max-windows 8]

The defaults are sized for a shared 2-core CPU (MLX CPU build): smaller than
mlx-lm's own (e.g. gptq/awq calibrate on 8 windows of 128 tokens here, and dwq
takes 2 steps), so read the rows as what these settings give.

Methods (each called in-process from mlx-lm, on a fresh fp16 copy of the model):

  rtn      mlx_lm.utils.quantize_model, what ``mlx_lm.convert -q`` does: every
           matrix, embedding included, at --bits.
  gptq     mlx_lm.quant.gptq.gptq_quantize: linear layers at --bits; the other
           quantizable layers (the tied embedding) at mlx-lm's default 6 bits, group 64.
  awq      mlx_lm.quant.awq.awq_quantize with mlx-lm's table for the model type
           ("llama" for SmolLM2): linear layers at --bits, the embedding at mlx-lm's
           default 4 bits, group 32; --awq-grid scale/clip candidates.
  dwq      mlx_lm.quant.dwq.dwq_quantize: rtn at --bits, then its scales and biases
           are trained to match the fp16 model's logits (KL at temperature 2) for one
           pass over --dwq-samples windows (--dwq-valid more for its validation loss).
  dynamic  mlx_lm.quant.dynamic_quant: per-layer sensitivities, then the threshold
           that meets a bpw target in mlx-lm's count; each --dynamic item is
           TARGET:LOW_BITS:HIGH_BITS (layers at LOW or HIGH bits, group --group-size),
           labelled "mlx-lm dyn@TARGET" (the row also has target_bpw, low_bits, high_bits).
           The sensitivities depend on the bit pair only: later targets of a pair reuse
           them, and their "quant s" leaves them out.

mlx-lm's scripts download their calibration data from the Hub; here the quantizer
functions are called directly with windows of the local calibration text (Debian
bible-kjv, ``local_text("calib")``) tokenized by the model's tokenizer
(``calibration_windows``), so nothing is downloaded. A method or bit width mlx-lm
does not support (gptq packs only 2, 4 or 8 bits) or that fails gives a row with
the error text. Evaluation is that of benchmarks/quantization_quality.py: the same
fp16 reference, fortunes text, --seq-len and --max-windows; bpw is mlx_slm's
(``weight_stats``: every stored bit of the matrices). "quant s" is the wall time
of the mlx-lm call, "peak MB" the resident memory it added. On a CPU the methods
compute in float32 (--compute-dtype; MLX's CPU float16 is very slow) and their
result is cast back to fp16, so scales and biases take 16 bits as mlx-lm stores
them. Rows are written to OUT/mlx_lm.json (atomically, after every row) and
printed as a table, method names prefixed "mlx-lm ".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import PeakMemory, quality_table, source_folder, write_texts

import mlx_slm
from mlx_slm.data.windows import calibration_windows
from mlx_slm.io.atomic import atomic_file
from mlx_slm.model_access import access, model_config, set_model_config

METHODS = ("rtn", "gptq", "dynamic", "awq", "dwq")


def quantize_rtn(model, config, bits, args, data):
    from mlx_lm.utils import quantize_model

    return quantize_model(model, config, group_size=args.group_size, bits=bits)[1]


def quantize_gptq(model, config, bits, args, data):
    from mlx_lm.quant.gptq import gptq_quantize

    _, quantization = gptq_quantize(model, data.calib(), bits, args.group_size,
                                    fallback_bits=6, fallback_group_size=64)
    return {**config, "quantization": quantization}


def quantize_awq(model, config, bits, args, data):
    from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS, awq_quantize, update_config

    awq_config = AWQ_MODEL_CONFIGS.get(config["model_type"])
    if awq_config is None:
        raise NotImplementedError(f"mlx-lm's AWQ has no table for model_type {config['model_type']!r}")
    awq_quantize(model, data.calib(), awq_config, group_size=args.group_size, bits=bits,
                 embed_group_size=32, embed_bits=4, n_grid=args.awq_grid)
    return update_config(model, dict(config))


def quantize_dwq(model, config, bits, args, data):
    from mlx import optimizers
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import quantize_model

    config = quantize_model(model, config, group_size=args.group_size, bits=bits)[1]
    windows = data.windows(args.dwq_samples + args.dwq_valid, args.calib_seq_len)
    train = [(w, 0) for w in windows[: args.dwq_samples]]
    valid = [(w, 0) for w in windows[args.dwq_samples:]]
    dwq_quantize(model, lambda batch, index, split: data.teacher(batch),
                 optimizers.Adam(learning_rate=args.dwq_lr, bias_correction=True), train, valid,
                 batch_size=args.dwq_batch_size, max_seq_length=args.calib_seq_len, seed=args.seed,
                 dtype=data.compute_dtype)
    model.eval()
    return config


def quantize_dynamic(model, config, spec, args, data):
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities, estimate_threshold
    from mlx_lm.utils import quantize_model

    target, low, high = spec
    key = (low, high)
    if key not in data.sensitivities:  # depends on the bit pair only, not on the target
        data.sensitivities[key] = dict(estimate_sensitivities(model, data.calib(), low, args.group_size,
                                                              high, args.group_size))
    sensitivities = data.sensitivities[key]
    model.set_dtype(data.source_dtype)  # mlx-lm's bpw count, which the target is in, sees fp16 scales
    threshold = estimate_threshold(model, sensitivities, target, low, args.group_size, high, args.group_size)

    def predicate(path, module):
        if sensitivities.get(path, -np.inf) > threshold:
            return {"bits": high, "group_size": args.group_size}
        return True

    return quantize_model(model, config, group_size=args.group_size, bits=low, quant_predicate=predicate)[1]


QUANTIZERS = {"rtn": quantize_rtn, "gptq": quantize_gptq, "awq": quantize_awq, "dwq": quantize_dwq,
              "dynamic": quantize_dynamic}


class Calibration:
    """Calibration windows of the local text (built once) and the float teacher for dwq."""

    def __init__(self, path: Path, folder: Path, tokenizer, source_dtype, args):
        import mlx.core as mx

        self.path, self.folder, self.tokenizer, self.args = path, folder, tokenizer, args
        self.source_dtype, self.compute_dtype = source_dtype, getattr(mx, args.compute_dtype)
        self.cache = {}
        self.sensitivities = {}
        self.teacher_model = None

    def windows(self, num_samples: int, seq_len: int) -> np.ndarray:
        if (num_samples, seq_len) not in self.cache:
            self.cache[num_samples, seq_len] = calibration_windows(self.tokenizer, self.path, num_samples, seq_len)[0]
        return self.cache[num_samples, seq_len]

    def calib(self):
        import mlx.core as mx

        return mx.array(self.windows(self.args.num_samples, self.args.calib_seq_len))

    def teacher(self, batch):
        if self.teacher_model is None:
            self.teacher_model = mlx_slm.load(self.folder)[0]
            self.teacher_model.set_dtype(self.compute_dtype)
        return self.teacher_model(batch)


def runs(args) -> list[tuple[str, str, int | None, object]]:
    """(method, label, bits, setting) of every configuration to measure."""
    chosen = []
    bits_list = [int(b) for b in args.bits.split(",") if b]
    for method in [m for m in args.methods.split(",") if m]:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
        if method == "dynamic":
            for item in [i for i in args.dynamic.split(",") if i]:
                try:
                    target, low, high = item.split(":")
                    spec = (float(target), int(low), int(high))
                except ValueError:
                    raise SystemExit(f"--dynamic items are TARGET:LOW_BITS:HIGH_BITS, not {item!r}") from None
                chosen.append((method, f"mlx-lm dyn@{spec[0]:g}", None, spec))
        else:
            chosen += [(method, f"mlx-lm {method}", bits, bits) for bits in bits_list]
    return chosen


def float_matrices(model) -> int:
    """Matrices (2-D weights) left in a float dtype."""
    return sum(1 for name, a in access(model).arrays().items()
               if name.endswith(".weight") and len(a.shape) == 2 and "float" in str(a.dtype))


def measure(folder: Path, reference, tokenizer, data: Calibration, method: str, label: str, bits, setting,
            args, evaluate: dict) -> dict:
    """Quantize a fresh fp16 copy with mlx-lm's ``method``; evaluate it, or record the error."""
    model, _ = mlx_slm.load(folder)
    row = {"method": label, "bits": bits, "group_size": args.group_size}
    if method == "dynamic":
        row["target_bpw"], row["low_bits"], row["high_bits"] = setting
    model.set_dtype(data.compute_dtype)
    began = time.perf_counter()
    try:
        with PeakMemory() as memory:
            config = QUANTIZERS[method](model, model_config(model), setting, args, data)
    except Exception as err:
        return {**row, "error": f"{type(err).__name__}: {err}", "quant_seconds": time.perf_counter() - began}
    row.update(quant_seconds=time.perf_counter() - began, quant_peak_mb=memory.grown_bytes / 1e6)
    model.set_dtype(data.source_dtype)  # scales, biases and float layers back to the fp16 of the source
    set_model_config(model, config)
    row["float_layers"] = float_matrices(model)
    return {**row, **mlx_slm.evaluate(model, tokenizer, reference=reference, **evaluate)}


def table(rows: list[dict]) -> str:
    """quantization_quality.py's table; rows that failed show their error instead."""
    lines = quality_table([]).splitlines()
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<16}{r['bits'] or '-':>5}{r['group_size'] or '-':>6}  not run: {r['error']}")
        else:
            lines.append(quality_table([r]).splitlines()[-1])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the script with command-line arguments ``argv`` (default: sys.argv[1:])."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="float model folder or .gguf (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--out", default="runs/baselines", help="output folder (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(METHODS), help="mlx-lm methods to run (default: %(default)s)")
    parser.add_argument("--bits", default="4,3,2", help="bit widths of rtn, gptq, awq and dwq (default: %(default)s)")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--dynamic", default="4.5:3:5,3.5:2:4,3.0:2:4",
                        help="dynamic_quant runs, TARGET_BPW:LOW_BITS:HIGH_BITS each (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=8,
                        help="calibration windows of gptq, awq and dynamic (default: %(default)s)")
    parser.add_argument("--calib-seq-len", type=int, default=128, help="tokens per calibration window")
    parser.add_argument("--awq-grid", type=int, default=5,
                        help="AWQ scale ratios tried per layer group; clipping tries half as many "
                             "(mlx-lm's default is 20)")
    parser.add_argument("--dwq-samples", type=int, default=8, help="DWQ training windows (one pass)")
    parser.add_argument("--dwq-valid", type=int, default=4, help="DWQ validation windows")
    parser.add_argument("--dwq-batch-size", type=int, default=4)
    parser.add_argument("--dwq-lr", type=float, default=1e-5,
                        help="DWQ learning rate (mlx-lm's default 1e-6 is meant for its 512 steps of 2048 samples)")
    parser.add_argument("--compute-dtype", choices=("float32", "float16"), default="float32",
                        help="dtype the methods compute in; the result is cast back to the source's fp16 "
                             "(MLX's CPU backend is far slower in float16)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per evaluation window")
    parser.add_argument("--max-windows", type=int, default=8, help="evaluation windows")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = runs(args)
    start = time.perf_counter()

    texts = write_texts(out)
    settings = {k: getattr(args, k) for k in ("num_samples", "calib_seq_len", "group_size", "awq_grid",
                                               "dwq_samples", "dwq_valid", "dwq_batch_size", "dwq_lr",
                                               "compute_dtype", "seed", "seq_len", "max_windows")}
    print(f"calibration text: {texts['calib']}; evaluation text: {texts['eval']}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)

    import mlx.core as mx

    mx.random.seed(args.seed)
    folder = source_folder(out, args.model)
    reference, tokenizer = mlx_slm.load(folder)
    data = Calibration(out / "calib.txt", folder, tokenizer, reference.model.norm.weight.dtype, args)
    evaluate = {"text": out / "eval.txt", "seq_len": args.seq_len, "max_windows": args.max_windows,
                "decode_tokens": 0, "progress": False}
    rows = []
    print(table(rows), flush=True)
    for method, label, bits, setting in chosen:
        rows.append(measure(folder, reference, tokenizer, data, method, label, bits, setting, args, evaluate))
        print(table(rows).splitlines()[-1], flush=True)
        with atomic_file(out / "mlx_lm.json") as path:
            path.write_text(json.dumps({"texts": texts, "settings": settings, "rows": rows}, indent=2, default=str))

    print()
    print(table(rows))
    print(f"\nwrote {out / 'mlx_lm.json'} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
