"""The ``mlx-slm`` command: convert, quantize, eval, info, prune, distill, finetune, fuse, export.

Errors in the input (a wrong path, an unsupported architecture, bad settings, a
corrupt file) print one line and exit with status 2; ``MLX_SLM_DEBUG=1`` shows
the traceback of unexpected failures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace

from . import interrupt
from .cli_common import EPILOG, Parser, add_backend, add_calibration, add_cpu_engine, check_output
from .distill.cli import add_distill_parser
from .export.cli import add_export_parser
from .finetune.cli import add_finetune_parser, add_fuse_parser
from .prune.cli import add_prune_parser
from .quant.arguments import add_method_arguments, methods_help, quantize_config


def cmd_convert(args) -> None:
    import mlx_slm

    check_output(args, args.source)
    model, tokenizer = mlx_slm.load(args.source, backend=args.backend, dtype=args.dtype, lazy=True)
    mlx_slm.save(model, tokenizer, args.output, overwrite=args.overwrite, release=True)  # a tensor at a time
    print(f"wrote {args.output}")


def cmd_quantize(args) -> None:
    import mlx_slm
    from mlx_slm.data.windows import Calibration
    from mlx_slm.model_access import model_config
    from mlx_slm.quant.budget import plan_table
    from mlx_slm.quant.methods import methods

    check_output(args, args.model, args.calib, args.config)
    settings = quantize_config(args)
    calibration = Calibration(args.calib, None, args.num_samples, args.seq_len, args.calib_data).check()
    model, tokenizer = mlx_slm.load(args.model, backend=args.backend, lazy=True)  # read block by block
    mlx_slm.quantize(model, settings, replace(calibration, tokenizer=tokenizer))
    record = model_config(model).get("mlx_slm") or {}
    if "plan" in record:
        print(plan_table(record["plan"]))
    for name, method in methods().items():
        if method.report is not None and name in settings.options and name in record:
            print(method.report(record))
    stats = mlx_slm.stats.weight_stats(model)
    mlx_slm.save(model, tokenizer, args.output, overwrite=args.overwrite, release=True)
    print(f"wrote {args.output}: {stats['bpw']:.3f} bits per weight, {stats['size_bytes'] / 1e6:.1f} MB")


def evaluation_table(report: dict) -> str:
    rows = [("perplexity", f"{report['ppl']:.4f}")]
    if report["kld"] is not None:
        rows += [("KL(ref || model)", f"{report['kld']:.5f}"), ("top-1 agreement", f"{report['top1']:.2%}")]
    rows += [
        ("bits per weight", f"{report['bpw']:.3f}"),
        ("size", f"{report['size_bytes'] / 1e6:.1f} MB"),
        ("decode tokens/s", "-" if report["tokens_per_s"] is None else f"{report['tokens_per_s']:.1f}"),
        ("eval tokens/s", f"{report['eval_tokens_per_s']:.1f}"),
        ("peak memory", f"{report['peak_memory_bytes'] / 1e6:.0f} MB"),
        ("windows x seq_len", f"{report['windows']} x {report['seq_len']}"),
        ("backend", f"{report['backend']}, {report['engine']} engine ({report['blas']})"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_eval(args) -> None:
    import mlx_slm
    from mlx_slm.data.text import read_text
    from mlx_slm.data.windows import check_windows
    from mlx_slm.io.atomic import atomic_file

    check_windows(args.seq_len, args.max_windows)  # bad settings and garbage are refused before the models load
    read_text(args.text)
    model, tokenizer = mlx_slm.load(args.model, backend=args.backend)
    reference = mlx_slm.load(args.ref, backend=args.backend)[0] if args.ref else None
    report = mlx_slm.evaluate(model, tokenizer, text=args.text, reference=reference, seq_len=args.seq_len,
                              max_windows=args.max_windows, decode_tokens=args.decode_tokens,
                              cpu_engine=args.cpu_engine)
    print(evaluation_table(report))
    if args.json:
        with atomic_file(args.json, inputs=[args.model, args.ref, args.text]) as path:
            path.write_text(json.dumps({"model": str(args.model), "ref": args.ref, **report}, indent=2))
        print(f"wrote {args.json}")


def describe_format(settings: dict) -> str:
    """One line for a quantization entry of config.json: its format row's label."""
    from mlx_slm.formats import get_format

    return get_format(settings.get("mode", "affine")).label(settings["bits"], settings["group_size"])


def format_help() -> str:
    from mlx_slm.formats import FORMATS

    return "; ".join(f"{name}: {f.description} (default bits {f.default_bits}, group size "
                     f"{f.default_group_size})" for name, f in FORMATS.items())


def cmd_info(args) -> None:
    import mlx_slm
    from mlx_slm import _blas, _heap
    from mlx_slm.stats import weight_stats

    model, _ = mlx_slm.load(args.model, backend=args.backend)
    config = mlx_slm.model_config(model)
    stats = weight_stats(model)
    if str(args.model).lower().endswith(".gguf"):
        from mlx_slm.io.gguf import describe_file

        print(f"file              {describe_file(args.model)} (loaded dequantized, as below)")
    quantization = config.get("quantization") or {}
    print(f"model type        {config.get('model_type')}")
    print(f"layers            {config.get('num_hidden_layers')} x hidden {config.get('hidden_size')}, "
          f"{config.get('num_attention_heads')} heads / {config.get('num_key_value_heads')} KV heads")
    print(f"vocabulary        {config.get('vocab_size')}")
    if quantization:
        print(f"format            {describe_format(quantization)} ({stats['quantized_layers']} quantized layers)")
        overrides = {k: v for k, v in quantization.items() if isinstance(v, (dict, bool))}
        for path, value in overrides.items():
            print(f"  {path}: {'float' if value is False else describe_format(value)}")
        for path, reason in (config.get("mlx_slm") or {}).get("unquantized", {}).items():
            if path not in overrides:
                print(f"  {path}: float ({reason})")
    else:
        print(f"format            float ({config.get('torch_dtype', 'unknown dtype')})")
    print(f"bits per weight   {stats['bpw']:.3f} over {stats['matrix_weights'] / 1e6:.1f}M matrix weights")
    print(f"size              {stats['size_bytes'] / 1e6:.1f} MB")
    print(f"backend           {getattr(model, 'backend', 'mlx')} ({_blas.describe()})")
    print(f"memory            {_heap.describe()}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mlx-slm",
        description="Make small language models smaller: convert, quantize, prune, distill, fine-tune, evaluate, "
                    "export.",
        epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="GGUF or Hugging Face model -> MLX folder",
        description="Convert a .gguf file (F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants, dequantized) or a "
                    "Hugging Face folder / Hub id into a folder that mlx_lm.load reads.", epilog=EPILOG)
    convert.add_argument("source", help=".gguf file, model folder, or Hub id (org/name)")
    convert.add_argument("-o", "--output", required=True, help="output folder (written atomically)")
    convert.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                         help="float type for GGUF tensors (default: float16)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_backend(convert)
    convert.set_defaults(run=cmd_convert)

    from mlx_slm.data.teacher_text import DATA
    from mlx_slm.formats import FORMATS

    quantize = commands.add_parser(
        "quantize", help="quantize a model (affine, lut or ternary formats)",
        description="Quantize the linear and embedding layers. Formats -- " + format_help() + ". Methods -- "
                    + methods_help() + ". The calibrated methods read local text (--calib), nothing is "
                    "downloaded. --target-bpw chooses each layer's bits and group size from measured "
                    "sensitivities to meet a bits-per-weight budget, prints the plan and saves it in "
                    "config.json. Layers whose shape does not fit the format stay in float and are reported. "
                    "Only the affine format loads in stock mlx_lm.", epilog=EPILOG)
    quantize.add_argument("model", help="model folder, Hub id, or .gguf file")
    quantize.add_argument("-o", "--output", required=True, help="output folder (written atomically)")
    quantize.add_argument("--format", default="affine", choices=sorted(FORMATS),
                          help="weight format (default affine; see above)")
    quantize.add_argument("--bits", type=int, default=None,
                          help="bits per weight: affine 2-6 or 8 (default 4), lut 2/3/4 (default 4), ternary 2")
    quantize.add_argument("--group-size", type=int, default=None,
                          help="affine: input columns per scale and bias, 32/64/128 (default 64); lut: OUTPUT "
                               "rows sharing one palette, dividing the row count (default 8); ternary: input "
                               "columns per scale, a multiple of 32, or 0 for one scale per row (default 0)")
    quantize.add_argument("--per-row-scale", action=argparse.BooleanOptionalAction, default=None,
                          help="lut: a float16 scale per output row, palettes cluster w/scale (default: on "
                               "when a palette serves several rows, off for one-row palettes)")
    add_method_arguments(quantize)
    quantize.add_argument("--target-bpw", type=float, default=None,
                          help="mixed precision: average bits per weight of the matrices to reach (+-0.01), "
                               "e.g. 3.0; per-layer bits/group sizes from measured sensitivities")
    add_calibration(quantize, "calibration text for the calibrated methods and --target-bpw: .txt, or .jsonl "
                              "with a \"text\" field")
    quantize.add_argument("--calib-data", default="calib", choices=DATA,
                          help="'teacher': calibrate on text the float model writes, sampled before quantizing "
                               "(data-free; as many tokens as the windows need, seeded), instead of --calib "
                               "(default 'calib')")
    quantize.add_argument("--config", help="YAML/JSON per-layer overrides (by_type, by_name; 'fp16' keeps a layer)")
    quantize.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_cpu_engine(quantize, "the calibration passes of MLX models")
    add_backend(quantize)
    quantize.set_defaults(run=cmd_quantize)

    evaluate = commands.add_parser(
        "eval", help="perplexity, KL / top-1 vs a reference, bpw, size, speed, memory",
        description="Evaluate a model on local text in non-overlapping windows.", epilog=EPILOG)
    evaluate.add_argument("model", help="model folder, Hub id, or .gguf file")
    evaluate.add_argument("--text", required=True, help=".txt file or .jsonl file with a \"text\" field per line")
    evaluate.add_argument("--ref", help="reference model for KL divergence and top-1 agreement")
    evaluate.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    evaluate.add_argument("--max-windows", type=int, default=None, help="evaluate at most this many windows")
    evaluate.add_argument("--decode-tokens", type=int, default=32, help="greedy tokens timed for decode speed")
    add_cpu_engine(evaluate, "MLX models")
    evaluate.add_argument("--json", help="also write the results to this JSON file")
    add_backend(evaluate)
    evaluate.set_defaults(run=cmd_eval)

    info = commands.add_parser("info", help="layers, formats, bits per weight, size",
                               description="Describe a model.", epilog=EPILOG)
    info.add_argument("model", help="model folder, Hub id, or .gguf file")
    add_backend(info)
    info.set_defaults(run=cmd_info)
    add_prune_parser(commands)
    add_distill_parser(commands)
    add_finetune_parser(commands)
    add_fuse_parser(commands)
    add_export_parser(commands)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no "PyTorch was not found" notice
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    import mlx_slm  # noqa: F401  (loads the fast BLAS before MLX)
    from mlx_slm.errors import SLMError

    try:
        args.run(args)
    except SLMError as err:
        print(f"mlx-slm: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever it wraps
        return 2
    except KeyboardInterrupt:  # main() called from Python; the command itself exits in mlx_slm.interrupt
        print(interrupt.MESSAGE, file=sys.stderr)
        return interrupt.EXIT_STATUS
    except Exception as err:
        if os.environ.get("MLX_SLM_DEBUG"):
            raise
        print(f"mlx-slm: unexpected error: {type(err).__name__}: {err} (MLX_SLM_DEBUG=1 for details)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
