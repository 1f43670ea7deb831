"""``mlx-slm distill STUDENT --teacher TEACHER --data train.txt -o OUT``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = (
    "Train STUDENT to match TEACHER on local text with the loss alpha*CE(text) + (1-alpha)*T^2*D(teacher, "
    "student), D = forward KL, reverse KL, skew KL or JSD; optionally hidden-state distillation (learned "
    "projection when widths differ), the teacher's top-k logits cached on disk, gradient accumulation and "
    "checkpointing, quantization-aware training (--qat-format: the student trains through fake quantization "
    "and is saved quantized; --train-quantized: an already-quantized student, e.g. from quantize --method "
    "blockwise, trains its weights and step sizes through its own format and stays in it), and resuming after "
    "an interrupt (--checkpoint-dir + --resume). The student must "
    "share the teacher's tokenizer. Needs MLX; run data-parallel with `mlx.launch -n 2 ... mlx-slm distill`.")


def config_from_args(args):
    from . import DistillConfig

    qat = None
    if args.qat_format:
        qat = {"format": args.qat_format}
        qat.update({k: v for k, v in (("bits", args.qat_bits), ("group_size", args.qat_group_size)) if v is not None})
    return DistillConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, grad_accum=args.grad_accum,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, alpha=args.alpha,
        temperature=args.temperature, divergence=args.divergence, skew=args.skew,
        feature_weight=args.feature_weight, feature_layers=tuple(args.feature_layers or ()),
        teacher_top_k=args.top_k, top_k_tail=args.top_k_tail, cache_dir=args.cache_dir,
        grad_checkpoint=args.grad_checkpoint,
        eval_every=args.eval_every, keep_best=args.keep_best, patience=args.patience,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        seed=args.seed, qat=qat, train_quantized=args.train_quantized, adopt=args.adopt)


def cmd_distill(args) -> None:
    import mlx_slm
    from mlx_slm.cli_common import check_output
    from mlx_slm.data.text import read_text
    from mlx_slm.distill import distill
    from mlx_slm.errors import SLMError

    output = check_output(args, args.student, args.teacher, args.data, args.eval_text)
    if not Path(args.data).is_file():
        raise SLMError(f"no such training text: {args.data}")
    config = config_from_args(args)
    config.check()
    for text in (args.data, args.eval_text):  # garbage is refused before the models load
        if text is not None:
            read_text(text)
    student, tokenizer = mlx_slm.load(args.student)
    teacher, teacher_tokenizer = mlx_slm.load(args.teacher)
    windows = config.batch_size * config.grad_accum
    print(f"training on {args.data}: {config.steps} steps x {windows} windows x {config.seq_len} tokens = "
          f"{config.steps * windows * config.seq_len} tokens"
          + (", the student's quantized layers through their format" if config.train_quantized else ""))
    history = distill(student, teacher, tokenizer, args.data, config, eval_text=args.eval_text,
                      resume=args.resume, teacher_tokenizer=teacher_tokenizer)
    if config.qat:
        from mlx_slm.distill.qat import check_qat

        format_name, bits, group_size = check_qat(config.qat)
        mlx_slm.quantize(student, format=format_name, bits=bits, group_size=group_size, progress=False)
    mlx_slm.save(student, tokenizer, output, overwrite=args.overwrite,
                 extra_files={"distill_history.json": json.dumps(history, indent=1)})
    last = history[-1] if history else {}
    print(f"wrote {output}: {len(history)} steps, last loss {last.get('loss', float('nan')):.4f}")


def add_distill_parser(commands) -> None:
    """Add ``distill`` to the CLI's subcommands."""
    from ..cli_common import EPILOG
    from ..formats import qat_formats

    parser = commands.add_parser("distill", help="train a student to match a teacher (KD, QAT, resume)",
                                 description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("student", help="student model folder, Hub id or .gguf (float, or quantized with "
                                        "--train-quantized)")
    parser.add_argument("--teacher", required=True, help="teacher model (same tokenizer)")
    parser.add_argument("--data", required=True, help="training text: .txt, or .jsonl with a \"text\" field")
    parser.add_argument("-o", "--output", required=True, help="output folder (written atomically)")
    parser.add_argument("--eval-text", help="held-out text for KL / perplexity every --eval-every steps")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: never)")
    parser.add_argument("--keep-best", action="store_true",
                        help="save the student as it was at its lowest held-out KL, not after the last step")
    parser.add_argument("--patience", type=int, default=0,
                        help="stop after N evaluations without a lower held-out KL (default 0: never)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per micro-batch, all processes (4)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    parser.add_argument("--grad-checkpoint", action="store_true", help="recompute activations to save memory")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="peak AdamW learning rate (1e-4)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps, then cosine decay")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the cross-entropy with the text (0.5)")
    parser.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T (default 2)")
    parser.add_argument("--divergence", default="forward", choices=("forward", "reverse", "skew", "jsd"),
                        help="teacher-student divergence (default forward KL)")
    parser.add_argument("--skew", type=float, default=0.1, help="lambda of skew KL / beta of JSD (default 0.1)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="cache the teacher's top-k logits on disk and train on them (default: live teacher)")
    parser.add_argument("--top-k-tail", action="store_true",
                        help="with --top-k: the divergence over the k tokens and 'any other token' (the mass the "
                             "student moves outside the teacher's top k counts), not renormalized on the k")
    parser.add_argument("--cache-dir", default=".mlx_slm_cache", help="where the teacher cache lives")
    parser.add_argument("--feature-weight", type=float, default=0.0, help="weight of hidden-state distillation")
    parser.add_argument("--feature-layers", type=int, nargs="+", help="student layers matched to the teacher's")
    parser.add_argument("--qat-format", choices=qat_formats(), help="train through this format's rounding")
    parser.add_argument("--qat-bits", type=int, help="affine bits for --qat-format (default 4)")
    parser.add_argument("--qat-group-size", type=int,
                        help="group size for --qat-format (affine default 64; ternary 0 = one scale per row)")
    parser.add_argument("--train-quantized", action="store_true",
                        help="the student is quantized (e.g. by quantize --method blockwise): train its float "
                             "weights through the format's rounding together with its scales / palettes "
                             "(learned step sizes), the rest frozen, and save it in its format")
    parser.add_argument("--adopt", action=argparse.BooleanOptionalAction, default=True,
                        help="with --train-quantized: start the latent weights at the teacher's wherever those round "
                             "to the student's codes, else at the codes' values (default: adopt)")
    parser.add_argument("--checkpoint-dir", help="write checkpoints here (and resume from here)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="data order seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(run=cmd_distill)
