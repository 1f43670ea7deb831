"""``mlx-slm export coreml MODEL -o Name.mlpackage``, ``export coreai MODEL -o Name.aimodel``, ``export gguf``."""

from __future__ import annotations

from pathlib import Path

from .package import PRECISIONS

PACKAGE_SUFFIXES = {"coreml": ".mlpackage", "coreai": ".aimodel"}

COREML_DESCRIPTION = (
    "Write Name.mlpackage (Core ML, iOS 18, stateful KV cache; inputs inputIds and causalMask, states "
    "keyCache and valueCache, output logits), Name.json (the manifest SLMKit reads) and the tokenizer files "
    "into the folder of -o. Affine 4/8-bit layers keep their codes and scales (constexpr_blockwise_shift_scale), "
    "5/6-bit are stored as uint8, 2/3-bit as per-group lookup tables (constexpr_lut_to_dense); lut layers keep "
    "their codes, their row scales folded into one palette per row (constexpr_lut_to_dense), ternary layers "
    "become 2-bit codes with a [-s, 0, s] table per scale; float layers become fp16. Llama family (llama, "
    "mistral, qwen2, qwen3, smollm) and Gemma 3 (gemma3_text, gemma3: its text model; needs the MLX backend). "
    "Needs coremltools.")
COREAI_DESCRIPTION = (
    "Write Name.aimodel (Core AI: graph main, inputs input_ids and position_ids, states keyCache and valueCache "
    "updated in place, output float16 logits, as Apple's coreai-models runner expects), Name.json (the manifest) "
    "and the tokenizer files into the folder of -o. Every layer keeps its bits: affine 2/4/8-bit codes through "
    "blockwise_shift_scale with the model's scales and biases; 3/5/6-bit codes split into a 2/4-bit shift-scale "
    "part and a 1/2-bit high part; lut and ternary layers through lut_to_dense with their own codes and tables; "
    "float layers in their own float16 (or bfloat16). Llama family (llama, mistral, qwen2, qwen3, smollm) and "
    "Gemma 3 (gemma3_text, gemma3: its text model; needs the MLX backend). "
    "Needs coreai-core (pip install 'mlx-slm[coreai]').")
GGUF_DESCRIPTION = (
    "Write one .gguf file for llama.cpp (and mlx_slm.load), with the metadata and byte-level BPE vocabulary "
    "llama.cpp's converter writes (chat template kept; a llama model's Q/K rows permuted as llama.cpp expects). "
    "Affine 2-4-bit layers are written as Q4_1 and 5-bit ones as Q5_1, bit for bit (any group size); other "
    "affine layers are requantized (--requantize-type, default q8_0) and lut/ternary layers dequantized to "
    "--type, with the largest error per tensor reported. Float matrices become --type (default f16), norms and "
    "biases f32; or, with --kquant, k-quants packed here (llama.cpp's Q4_K_M / Q3_K_M per-tensor recipes, or one "
    "of Q2_K-Q6_K for every matrix), chosen to minimize the error weighted by each input column's mean squared "
    "activation on --calib text (unweighted without --calib). Llama family: llama, qwen2, qwen3.")


READING_BACKEND = ("numpy for a Llama-family model folder, its files memory-mapped and each tensor's pages "
                   "released once converted, so the model does not sit in memory beside what is built; else MLX "
                   "when importable")


def reading_backend(source: str, backend: str | None) -> str | None:
    """The backend an export loads ``source`` with (:data:`READING_BACKEND`): ``backend`` when given."""
    from ..errors import SLMError
    from ..io import hf
    from ..loading import check_modes
    from ..models.numpy_llama import check_model_type

    if backend is not None or Path(str(source)).expanduser().is_file():
        return backend
    try:
        config = hf.read_config(hf.resolve(source))
        check_model_type(config)
        check_modes(config, "numpy")
    except SLMError:
        return None  # the default backend's load says what is wrong, or runs what numpy cannot
    return "numpy"


def cmd_export_package(args) -> None:
    """``export coreml`` / ``export coreai``: the output checked before the model loads."""
    import mlx_slm
    from mlx_slm.export.package import package_path, refuse_existing

    export = getattr(mlx_slm, f"export_{args.target}")
    options = {}
    if args.target == "coreml":
        from mlx_slm.export.coreml_options import CoreMLOptions

        options["options"] = CoreMLOptions(args.shapes, args.query_lengths, args.logits)
    refuse_existing(package_path(args.output, PACKAGE_SUFFIXES[args.target]), args.overwrite, [args.model])
    model, tokenizer = mlx_slm.load(args.model, backend=reading_backend(args.model, args.backend))
    package = export(model, tokenizer, args.output, max_context=args.max_context,
                     compute_precision=args.compute_precision, overwrite=args.overwrite, **options)
    print(f"wrote {package} and {package.with_suffix('.json').name}")


def cmd_export_gguf(args) -> None:
    import mlx_slm
    from mlx_slm.data.windows import Calibration, check_windows
    from mlx_slm.errors import SLMError
    from mlx_slm.export.gguf import check_output_file, export_gguf, resolve_types

    types = {"float": args.type, "requantize": args.requantize_type}
    resolve_types(types)
    if args.calib is not None and args.kquant is None:
        raise SLMError("--calib is for k-quants: pass --kquant too")
    check_windows(args.seq_len, args.num_samples)
    check_output_file(args.output, args.overwrite, [args.model, args.calib])
    model, tokenizer = mlx_slm.load(args.model, backend=reading_backend(args.model, args.backend))
    calibration = None if args.calib is None else Calibration(args.calib, tokenizer, args.num_samples, args.seq_len)
    print(export_gguf(model, tokenizer, args.output, overwrite=args.overwrite, types=types, kquant=args.kquant,
                      calibration=calibration, progress=True).format())


def query_lengths(text: str) -> tuple:
    """``--query-lengths 1,64`` -> (1, 64)."""
    import argparse

    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,64, not {text!r}") from None


def add_coreml_options(target) -> None:
    """``export coreml``'s shape and logits options (:class:`~.coreml_options.CoreMLOptions`)."""
    from .coreml_options import LOGITS, SHAPES

    target.add_argument("--shapes", choices=SHAPES, default="ranged",
                        help="ranged (default): inputIds [1, 1..C] and causalMask, swift-transformers' contract, for "
                             "CPU and GPU; enumerated: inputIds [1, T] for T in --query-lengths and position [1], "
                             "shapes the Neural Engine compiles (SLMKit feeds prompts in chunks)")
    target.add_argument("--query-lengths", type=query_lengths, default=None, metavar="1,64",
                        help="the T values of --shapes enumerated, 1 included (default: 1,64)")
    target.add_argument("--logits", choices=LOGITS, default="all",
                        help="all (default): logits [1, T, vocab]; last: [1, 1, vocab], the last position only "
                             "(all a generator reads)")


def add_package_target(targets, name: str, summary: str, description: str, context: str, float32: str) -> None:
    """``export coreml`` / ``export coreai``: the same options, worded per runtime (Core ML's shape options too)."""
    from ..cli_common import EPILOG, add_backend

    target = targets.add_parser(name, help=summary, description=description, epilog=EPILOG)
    target.add_argument("model", help="model folder, Hub id, or .gguf file (float, affine, lut or ternary)")
    target.add_argument("-o", "--output", required=True, help=f"Name{PACKAGE_SUFFIXES[name]} (written atomically)")
    target.add_argument("--max-context", type=int, default=None,
                        help=f"{context} (default: 2048, or the model's max_position_embeddings if smaller; "
                             "at most max_position_embeddings)")
    target.add_argument("--compute-precision", choices=PRECISIONS, default="float16",
                        help=f"float16 (default), or float32: {float32}")
    target.add_argument("--overwrite", action="store_true", help="replace an existing package and manifest")
    if name == "coreml":
        add_coreml_options(target)
    add_backend(target, READING_BACKEND)
    target.set_defaults(run=cmd_export_package)


def add_export_parser(commands) -> None:
    """Add ``export`` (with its ``coreml``, ``coreai`` and ``gguf`` targets) to the CLI's subcommands."""
    from ..cli_common import EPILOG, add_backend, add_calibration

    export = commands.add_parser("export", help="export a model to Core ML, Core AI or GGUF (llama.cpp)",
                                 description="Export a model to another runtime.", epilog=EPILOG)
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    add_package_target(targets, "coreml", "Core ML .mlpackage + manifest + tokenizer", COREML_DESCRIPTION,
                       "KV-cache length in tokens", "activations, attention and logits in fp32 (weights and "
                       "KV-cache states stay fp16 or compressed)")
    add_package_target(targets, "coreai", "Core AI .aimodel + manifest + tokenizer", COREAI_DESCRIPTION,
                       "longest context in tokens", "activations, attention and KV cache in fp32 (logits stay "
                       "float16, as Apple's runner reads them)")
    from .gguf import FLOAT_CHOICES, REQUANTIZE_CHOICES
    from .kquant_plan import PRESETS

    gguf = targets.add_parser("gguf", help="one .gguf file for llama.cpp", description=GGUF_DESCRIPTION,
                              epilog=EPILOG)
    gguf.add_argument("model", help="model folder, Hub id, or .gguf file (float, affine, lut or ternary)")
    gguf.add_argument("-o", "--output", required=True, help="FILE.gguf (written beside it, then renamed)")
    gguf.add_argument("--type", choices=FLOAT_CHOICES, default="f16",
                      help="GGUF type of float matrices and of dequantized lut/ternary layers (default f16)")
    gguf.add_argument("--requantize-type", choices=REQUANTIZE_CHOICES, default="q8_0",
                      help="GGUF type of affine layers no GGUF block holds exactly: 6/8 bits, or scales "
                           "beyond float16 (default q8_0)")
    gguf.add_argument("--kquant", choices=tuple(PRESETS), default=None,
                      help="quantize a float model's matrices to k-quants: q4_k_m / q3_k_m (llama.cpp's per-tensor "
                           "recipes) or q2_k .. q6_k (every matrix one type)")
    add_calibration(gguf, "calibration text for --kquant (.txt or .jsonl): weights each input column by its mean "
                          "squared activation")
    gguf.add_argument("--overwrite", action="store_true", help="replace an existing file")
    add_backend(gguf, READING_BACKEND)
    gguf.set_defaults(run=cmd_export_gguf)
