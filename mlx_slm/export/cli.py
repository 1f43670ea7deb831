"""``mlx-slm export coreml MODEL -o Name.mlpackage``."""

from __future__ import annotations

from .coreml import PRECISIONS

COREML_DESCRIPTION = (
    "Write Name.mlpackage (Core ML, iOS 18, stateful KV cache; inputs inputIds and causalMask, states "
    "keyCache and valueCache, output logits), Name.json (the manifest SLMKit reads) and the tokenizer files "
    "into the folder of -o. Affine 4/8-bit layers keep their codes and scales (constexpr_blockwise_shift_scale), "
    "5/6-bit are stored as uint8, 2/3-bit as per-group lookup tables (constexpr_lut_to_dense); lut layers keep "
    "their codes and palettes (constexpr_lut_to_dense, times their row scales), ternary layers become 2-bit "
    "codes with a [-s, 0, s] table per scale; float layers become fp16. Llama family (llama, mistral, qwen2, "
    "qwen3, smollm) and Gemma 3 (gemma3_text, gemma3: its text "
    "model; needs the MLX backend). Needs coremltools.")


def cmd_export_coreml(args) -> None:
    import mlx_slm
    from mlx_slm.export import export_coreml
    from mlx_slm.export.coreml import package_path, refuse_existing

    refuse_existing(package_path(args.output), args.overwrite, [args.model])
    model, tokenizer = mlx_slm.load(args.model, backend=args.backend)
    package = export_coreml(model, tokenizer, args.output, max_context=args.max_context,
                            compute_precision=args.compute_precision, overwrite=args.overwrite)
    print(f"wrote {package} and {package.with_suffix('.json').name}")


def add_export_parser(commands) -> None:
    """Add ``export`` (with its ``coreml`` target) to the CLI's subcommands."""
    from ..cli_common import EPILOG, add_backend

    export = commands.add_parser("export", help="export a model for Apple devices (Core ML)",
                                 description="Export a model to another runtime.", epilog=EPILOG)
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    coreml = targets.add_parser("coreml", help="Core ML .mlpackage + manifest + tokenizer",
                                description=COREML_DESCRIPTION, epilog=EPILOG)
    coreml.add_argument("model", help="model folder, Hub id, or .gguf file (float, affine, lut or ternary)")
    coreml.add_argument("-o", "--output", required=True, help="Name.mlpackage (written atomically)")
    coreml.add_argument("--max-context", type=int, default=None,
                        help="KV-cache length in tokens (default: 2048, or the model's max_position_embeddings "
                             "if smaller; at most max_position_embeddings)")
    coreml.add_argument("--compute-precision", choices=PRECISIONS, default="float16",
                        help="float16 (default), or float32: activations, attention and logits in fp32 "
                             "(weights and KV-cache states stay fp16 or compressed)")
    coreml.add_argument("--overwrite", action="store_true", help="replace an existing package and manifest")
    add_backend(coreml)
    coreml.set_defaults(run=cmd_export_coreml)
