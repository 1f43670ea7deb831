"""``mlx-slm prune MODEL -o OUT``: zeros in the weights, or a smaller model, or both."""

from __future__ import annotations

import textwrap

PRUNE_DESCRIPTION = textwrap.fill(
    "Prune a float model and save it (a folder that mlx_lm.load reads). Unstructured / N:M pruning "
    "(--sparsity or --pattern) sets weights of every decoder linear layer (q/k/v/o, gate/up/down; never the "
    "embeddings or the output head) to zero; the architecture stays the same. Methods: magnitude (smallest "
    "|W| per layer), wanda (smallest |W|*||x|| per output row) and sparsegpt (OBS selection plus weight "
    "update); the last two calibrate block by block on --calib text. Structured pruning (--mlp-fraction, "
    "--drop-heads, --drop-layers) removes MLP channels, whole KV groups and whole layers, ranked on --calib "
    "text, and writes a smaller standard config. Structured pruning runs first when both are asked for.", 100)

PRUNE_EXAMPLES = """examples:
  mlx-slm prune smollm2-f16 -o smollm2-wanda50 --method wanda --sparsity 0.5 --calib kjv.txt
  mlx-slm prune smollm2-f16 -o smollm2-2of4 --method sparsegpt --pattern 2:4 --calib kjv.txt
  mlx-slm prune smollm2-f16 -o smollm2-small --mlp-fraction 0.25 --drop-heads 1 --drop-layers 4 --calib kjv.txt
"""


def cmd_prune(args) -> None:
    import mlx_slm
    from mlx_slm.cli_common import check_output
    from mlx_slm.errors import SLMError
    from mlx_slm.prune import count_parameters, prune, prune_structured

    unstructured = args.sparsity is not None or args.pattern is not None
    structured = bool(args.mlp_fraction or args.drop_heads or args.drop_layers)
    if args.sparsity is not None and args.pattern is not None:
        raise SLMError("give either --sparsity or --pattern, not both")
    if not (unstructured or structured):
        raise SLMError("nothing to prune: give --sparsity or --pattern, and/or --mlp-fraction, --drop-heads, "
                       "--drop-layers")
    check_output(args, args.model, args.calib)
    model, tokenizer = mlx_slm.load(args.model, backend=args.backend, lazy=True)  # read block by block
    calibration = {"calib": args.calib, "tokenizer": tokenizer, "num_samples": args.num_samples,
                   "seq_len": args.seq_len}
    before = count_parameters(model)
    if structured:
        prune_structured(model, mlp_fraction=args.mlp_fraction, drop_heads=args.drop_heads,
                         drop_layers=args.drop_layers, **calibration)
    if unstructured:
        prune(model, method=args.method, sparsity=args.sparsity if args.sparsity is not None else 0.0,
              pattern=args.pattern, cpu_engine=args.cpu_engine, **calibration)
    records = mlx_slm.model_config(model)["mlx_slm"]["pruning"]
    summary = [f"{before / 1e6:.2f}M -> {count_parameters(model) / 1e6:.2f}M parameters"]
    if unstructured:
        summary.append(f"{records[-1]['achieved_sparsity']:.1%} zeros in {records[-1]['pruned_layers']} layers")
    mlx_slm.save(model, tokenizer, args.output, overwrite=args.overwrite, release=True)
    print(f"wrote {args.output}: {', '.join(summary)}")


def add_prune_parser(commands) -> None:
    """Add ``prune`` to the CLI's subcommands."""
    import argparse

    from ..cli_common import EPILOG, add_backend, add_calibration, add_cpu_engine

    parser = commands.add_parser("prune", help="prune a model: zeros in the weights (unstructured, N:M) or a "
                                               "smaller model (channels, heads, layers)",
                                 description=PRUNE_DESCRIPTION, epilog=PRUNE_EXAMPLES + "\n" + EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder, Hub id, or .gguf file (float, not quantized)")
    parser.add_argument("-o", "--output", required=True, help="output folder (written atomically)")
    zeros = parser.add_argument_group("zeros in the weights (same architecture)")
    zeros.add_argument("--method", default="wanda", choices=("magnitude", "wanda", "sparsegpt"),
                       help="how to choose the zeros (default wanda; wanda and sparsegpt need --calib)")
    zeros.add_argument("--sparsity", type=float, default=None,
                       help="fraction of zeros in every decoder linear layer, in [0, 1), e.g. 0.5")
    zeros.add_argument("--pattern", default=None,
                       help="N:M, e.g. 2:4 or 4:8: N zeros in every M consecutive input weights of a row "
                            "(instead of --sparsity)")
    smaller = parser.add_argument_group("a smaller model (standard config, fewer parameters)")
    smaller.add_argument("--mlp-fraction", type=float, default=0.0,
                         help="fraction of MLP intermediate channels removed from every layer, in [0, 1)")
    smaller.add_argument("--drop-heads", type=int, default=0,
                         help="KV heads removed per layer, each with the query heads that share it")
    smaller.add_argument("--drop-layers", type=int, default=0,
                         help="decoder layers removed (lowest Block Influence first, as ShortGPT)")
    calibration = parser.add_argument_group("calibration text")
    add_calibration(calibration, "a .txt file, or .jsonl with a \"text\" field per line")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_backend(parser)
    add_cpu_engine(parser, "the calibration pass of wanda and sparsegpt")
    parser.set_defaults(run=cmd_prune)
