"""``mlx-slm finetune MODEL --data train.jsonl -o ADAPTERS`` and ``mlx-slm fuse MODEL --adapters ADAPTERS -o OUT``."""

from __future__ import annotations

from pathlib import Path

FINETUNE_DESCRIPTION = (
    "Train LoRA or DoRA adapters on MODEL with JSONL data in mlx-lm's formats: one record per line, "
    '{"text": ...}, {"prompt": ..., "completion": ...} or {"messages": [{"role": ..., "content": ...}, ...]} '
    "(the last two through the model's chat template). A quantized MODEL gives QLoRA: its base stays "
    "quantized. Writes ADAPTERS/adapters.safetensors and adapter_config.json in mlx-lm's layout (so "
    "`mlx_lm.generate --adapter-path` reads them) plus the optimizer state for --resume, atomically every "
    "--save-every steps and at the end. On a CPU the base computes in float32 (quantized layers dequantized "
    "exactly) for speed. Needs MLX.")

FUSE_DESCRIPTION = (
    "Merge the adapters in ADAPTERS into MODEL and write a model that stock mlx_lm.load runs. A quantized base "
    "is re-quantized in its own bits and group size: --requantize gptq (default) compensates the rounding "
    "error with GPTQ on --calib text, so the adapter's effect survives; rtn rounds to nearest as mlx_lm.fuse "
    "does (small adapter changes round away); none keeps the fused layers in float. Needs MLX.")


def cmd_finetune(args) -> None:
    import json

    import mlx_slm
    from mlx_slm.cli_common import check_output
    from mlx_slm.errors import SLMError
    from mlx_slm.finetune import finetune
    from mlx_slm.finetune.data import read_records

    output = Path(args.output)
    if output.exists() and not (args.overwrite or args.resume):
        raise SLMError(f"{output} already exists (pass --resume to continue that run or --overwrite to replace it)")
    check_output(args, args.model, args.data, args.valid, overwrite=args.overwrite or args.resume)
    for data in (args.data, args.valid):  # garbage is refused before the model loads
        if data is not None:
            read_records(data)
    model, tokenizer = mlx_slm.load(args.model)
    history = finetune(model, tokenizer, args.data, method=args.method, rank=args.rank, scale=args.scale,
                       dropout=args.dropout, num_layers=args.num_layers, keys=args.keys, steps=args.steps,
                       batch_size=args.batch_size, learning_rate=args.learning_rate, seq_len=args.seq_len,
                       valid_jsonl=args.valid, eval_every=args.eval_every, save_every=args.save_every,
                       adapter_dir=output, resume=args.resume, overwrite=args.overwrite,
                       grad_checkpoint=args.grad_checkpoint, mask_prompt=args.mask_prompt, seed=args.seed)
    last = history[-1] if history else {}
    val = [r["val_loss"] for r in history if "val_loss" in r]
    summary = f", validation loss {val[-1]:.4f}" if val else ""
    print(f"wrote {output}: {len(history)} steps, last loss {last.get('loss', float('nan')):.4f}{summary}")
    if args.history:
        from mlx_slm.io.atomic import atomic_file

        with atomic_file(args.history, inputs=[args.model, args.data, args.valid]) as path:
            path.write_text(json.dumps(history, indent=1))


def cmd_fuse(args) -> None:
    import mlx_slm
    from mlx_slm.cli_common import check_output
    from mlx_slm.finetune import fuse, load_adapters

    check_output(args, args.model, args.adapters, args.calib)
    model, tokenizer = mlx_slm.load(args.model)
    load_adapters(model, args.adapters)
    requantize = None if args.requantize == "none" else args.requantize
    fuse(model, requantize=requantize, calib=args.calib, tokenizer=tokenizer, num_samples=args.num_samples,
         seq_len=args.seq_len)
    mlx_slm.save(model, tokenizer, args.output, overwrite=args.overwrite)
    record = mlx_slm.model_config(model)["mlx_slm"]["fuse"]
    print(f"wrote {args.output}: {record['layers']} adapter layers fused "
          f"({record['quantized_layers']} quantized, requantize {record['requantize']}) in {record['seconds']:.1f} s")


def add_finetune_parser(commands) -> None:
    """Add ``finetune`` to the CLI's subcommands."""
    from ..cli_common import EPILOG

    parser = commands.add_parser("finetune", help="train LoRA / DoRA / QLoRA adapters on JSONL data",
                                 description=FINETUNE_DESCRIPTION, epilog=EPILOG)
    parser.add_argument("model", help="model folder, Hub id or .gguf (float, or affine-quantized for QLoRA)")
    parser.add_argument("--data", required=True, help="training JSONL (text, prompt/completion or chat records)")
    parser.add_argument("-o", "--output", required=True, help="adapter folder (written atomically)")
    parser.add_argument("--valid", help="validation JSONL; its loss is reported every --eval-every steps")
    parser.add_argument("--method", choices=("lora", "dora"), default="lora", help="adapter type (default lora)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--scale", type=float, default=20.0, help="LoRA scale, mlx-lm's convention (default 20)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout on the adapter input (default 0)")
    parser.add_argument("--num-layers", type=int, default=-1, help="adapt the last N decoder layers (-1: all)")
    parser.add_argument("--keys", nargs="+", help="layer paths inside a decoder layer to adapt, e.g. "
                        "self_attn.q_proj self_attn.v_proj (default: every linear layer)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="Adam learning rate (default 1e-5)")
    parser.add_argument("--seq-len", type=int, default=512, help="input tokens per example; longer ones are cut")
    parser.add_argument("--mask-prompt", action="store_true", help="train on completions only (prompt/chat data)")
    parser.add_argument("--eval-every", type=int, default=0, help="validation loss every N steps (default never)")
    parser.add_argument("--save-every", type=int, default=100, help="save the adapter folder every N steps")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in the output folder")
    parser.add_argument("--grad-checkpoint", action="store_true", help="recompute activations to save memory")
    parser.add_argument("--seed", type=int, default=0, help="adapter initialisation and data order seed")
    parser.add_argument("--history", help="also write the per-step history to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing adapter folder")
    parser.set_defaults(run=cmd_finetune)


def add_fuse_parser(commands) -> None:
    """Add ``fuse`` to the CLI's subcommands."""
    from ..cli_common import EPILOG, add_calibration

    parser = commands.add_parser("fuse", help="merge adapters into the model (GPTQ re-quantization)",
                                 description=FUSE_DESCRIPTION, epilog=EPILOG)
    parser.add_argument("model", help="the base model the adapters were trained on")
    parser.add_argument("--adapters", required=True, help="adapter folder (adapters.safetensors + adapter_config.json)")
    parser.add_argument("-o", "--output", required=True, help="output model folder (written atomically)")
    parser.add_argument("--requantize", choices=("gptq", "rtn", "none"), default="gptq",
                        help="how a quantized base is stored again (default gptq; ignored for a float base)")
    add_calibration(parser, "calibration text for gptq: .txt, or .jsonl with a \"text\" field", num_samples=32)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(run=cmd_fuse)
