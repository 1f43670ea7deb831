"""Low-bit quantization by training on SmolLM2-135M: post-training start vs block-wise vs end-to-end QAT.

    python benchmarks/lowbit_training.py [--out runs/lowbit_training]
        [--rows affine:2:64,affine:2:32,affine:3:64,affine:4:64,lut:3:8,lut:4:8,ternary:2:0]
        [--recipes start,blockwise,blockwise+e2e,e2e,learned,e2e+learned] [--num-samples 32] [--calib-seq-len 256]
        [--start-data calib|teacher] [--blockwise-epochs 2] [--blockwise-lr 1e-3] [--blockwise-scale-lr 1e-3]
        [--blockwise-data calib|teacher]
        [--e2e-steps 40] [--e2e-lr LR] [--e2e-data calib|teacher] [--learned-steps 200] [--learned-samples N] [--resume]

A row is FORMAT:BITS:GROUP, or FORMAT:BITS:GROUP:EMBED with the embedding and its tied
head stored affine at EMBED bits in groups of 64 (``affine:2:64:4``: a mixed model, its
bpw counting the embedding). Its ``start`` is the post-training method the training
recipes start from: gptq for affine and ternary, imatrix for lut (quantized once and
reused by every recipe of the row; saved in OUT/start-DIGEST-ROW). Every step's result is saved
once per settings (DIGEST, with settings.json in the folder), so rows share a step only when
they trained it alike. Recipes:

- ``blockwise``: what ``quantize(method="blockwise")`` does after its start: every
  decoder block's weights and quantization parameters trained through the format's
  rounding on the block-output error (:func:`mlx_slm.quant.blockwise.reconstruct_blocks`)
  on the calibration windows;
- ``e2e``: what ``quantize(method="e2e")`` does after its start
  (:func:`mlx_slm.quant.methods.e2e.train_end_to_end`): every quantized layer's weights
  and step sizes (the embedding and tied head included) trained through the format on
  random windows of the training part of the text, towards the float model's cached
  top-k logits (KL at temperature 1 over the k tokens and the rest), ending at the best
  held-out evaluation and kept only if the held-out KL dropped (the result saved in
  OUT/e2e-DIGEST-BASE, for ``e2e+learned`` and for ``benchmarks/kl_by_part.py``);
- ``blockwise+e2e``: the same end-to-end run from the blockwise result (the one the
  ``blockwise`` recipe measured, saved in OUT/blockwise-DIGEST-START; its seconds and tokens count);
- ``learned``: what ``quantize(method="learned")`` does after its start
  (:func:`mlx_slm.quant.learned.learn_quantization`): the affine scales and biases alone trained
  towards the float model's logits on the start's calibration windows, or on
  ``--learned-samples`` windows of the same text (``--learned-steps``, the method's other
  defaults), kept only if its held-out windows' KL dropped;
- ``e2e+learned``: the ``e2e`` recipe (its saved result, trained first if need be), then the
  ``learned`` one on it (what
  ``quantize(method="learned", learned_options={"start": "e2e"})`` does; affine rows).

Texts: training/calibration on Debian's bible-kjv (its first 95%; the last 5% is the
held-out text the end-to-end runs evaluate on every ``--e2e-eval-every`` steps, giving
the KL-vs-tokens curve), or on text sampled from the float model (``--start-data``,
``--blockwise-data``, ``--e2e-data`` teacher: sampled once per run, kept in OUT); evaluation
on Debian's fortunes as in benchmarks/quantization_quality.py (8 x 512 tokens, KL(fp16 ||
model) per token, top-1, PPL, bpw). "tokens" counts the tokens trained on (a token seen twice counts twice),
"train s" the training wall time, sampling text from the float model included (a row that
reuses text sampled for an earlier row counts the seconds it took), "total s" with the
start's quantization (with any sampling of its calibration text). Prints a table and
writes OUT/lowbit_training.json after every row (``--resume`` keeps the rows already
measured with the same settings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import mlx_slm
from mlx_slm import interrupt
from mlx_slm.data.corpora import local_text
from mlx_slm.data.teacher_text import DATA
from mlx_slm.io.atomic import atomic_file
from mlx_slm.quant.methods.blockwise import default_start
from mlx_slm.quant.methods.learned import LearnedConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import earlier_rows, source_folder

RECIPES = ("start", "blockwise", "blockwise+e2e", "e2e", "learned", "e2e+learned")
DEFAULT_RECIPES = "start,blockwise,blockwise+e2e,e2e"  # learned polishes affine rows only
DEFAULT_ROWS = "affine:2:64,affine:2:32,affine:3:64,affine:4:64,lut:3:8,lut:4:8,ternary:2:0"


def parse_row(text: str) -> dict:
    """FORMAT:BITS:GROUP[:EMBED] or bpw:X -> quantize's settings. EMBED, if given, is the bits of the
    embedding and the tied head, stored affine in groups of 64 (a mixed model: the row's bpw counts it).
    bpw:X plans every layer's affine bits and group size to average X bits per weight (quantize's
    ``target_bpw``, on the start's calibration windows)."""
    if text.startswith("bpw:"):
        if not re.fullmatch(r"bpw:\d+(\.\d+)?", text):
            raise ValueError(f"row {text!r} is not bpw:X (X bits per weight, e.g. bpw:2.5)")
        return {"format": "affine", "target_bpw": float(text[4:])}
    fields = text.split(":")
    if len(fields) not in (3, 4) or not all(field.isdigit() for field in fields[1:]):
        raise ValueError(f"row {text!r} is not FORMAT:BITS:GROUP[:EMBED]")
    row = {"format": fields[0], "bits": int(fields[1]), "group_size": int(fields[2])}
    if len(fields) == 4:
        row["config"] = {"by_type": {"embedding": {"format": "affine", "bits": int(fields[3]), "group_size": 64}}}
    return row


def write_texts(out: Path) -> dict:
    """OUT/train.txt and OUT/heldout.txt (the calibration text split 95/5), OUT/eval.txt."""
    text, calib_source = local_text("calib")
    cut = text.rfind("\n", 0, int(len(text) * 0.95))
    (out / "train.txt").write_text(text[:cut])
    (out / "heldout.txt").write_text(text[cut:])
    evaluation, eval_source = local_text("eval")
    (out / "eval.txt").write_text(evaluation)
    return {"train": f"{calib_source}, first 95%", "heldout": f"{calib_source}, last 5%", "eval": eval_source}


def saved_folder(out: Path, kind: str, settings: dict, base: str) -> Path:
    """OUT/KIND-DIGEST-BASE: where one step of a recipe (the start, the block-wise pass, the end-to-end
    training) saves its result, once per base and settings (DIGEST: 8 hex digits of the settings' sha256,
    the settings themselves written in the folder as settings.json). A later run into the same OUT
    with other settings computes its own instead of reusing a result trained otherwise."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return out / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:8]}-{base}"


def save_step(model, tokenizer, folder: Path, settings: dict, record: str, content: str) -> None:
    """The step's model in ``folder`` with its settings (settings.json) and its measurements (``record``)."""
    mlx_slm.save(model, tokenizer, folder, overwrite=True, extra_files={
        "settings.json": json.dumps(settings, indent=1, sort_keys=True, default=str), record: content})


class Bench:
    def __init__(self, args, out: Path):
        self.args, self.out = args, out
        self.folder = source_folder(out, args.model)
        self.reference, self.tokenizer = mlx_slm.load(self.folder)
        self.evaluate = {"text": out / "eval.txt", "seq_len": args.seq_len, "max_windows": args.max_windows,
                         "decode_tokens": 0, "progress": False}
        self.calibration = {"calib": out / "train.txt", "tokenizer": self.tokenizer,
                            "num_samples": args.num_samples, "seq_len": args.calib_seq_len}

    def start(self, row: dict, name: str) -> tuple[Path, float]:
        """The row's post-training start, quantized once and saved (folder, seconds it took, any sampling
        of its calibration text included). ``--start-data teacher`` calibrates it on text sampled from
        the float model, as ``quantize(calib_data="teacher")`` does; the block-wise pass on teacher
        windows trains on the same windows."""
        args = self.args
        settings = {"row": row, "num_samples": args.num_samples, "calib_seq_len": args.calib_seq_len,
                    "start_data": args.start_data}
        folder = saved_folder(self.out, "start", settings, name.replace(":", "-"))
        record = folder / "seconds.txt"
        if not record.is_file():
            model, _ = mlx_slm.load(self.folder)
            calibration, sampling = self.start_calibration()
            began = time.perf_counter()
            mlx_slm.quantize(model, method=default_start(row["format"]), progress=False, **row, **calibration)
            seconds = time.perf_counter() - began + sampling
            save_step(model, self.tokenizer, folder, settings, "seconds.txt", f"{seconds}")
        return folder, float(record.read_text())

    def start_calibration(self, num_samples: int | None = None) -> tuple[dict, float]:
        """quantize's calibration settings of the start (the calibration text, or with ``--start-data teacher``
        text sampled from the float model) and the seconds sampling took (0 for the calibration text);
        ``num_samples`` windows of the same text instead of ``--num-samples``."""
        from mlx_slm.data.teacher_text import window_tokens
        from mlx_slm.data.windows import SAMPLE_SEED

        num_samples = num_samples or self.args.num_samples
        calibration = {**self.calibration, "num_samples": num_samples}
        if self.args.start_data != "teacher":
            return calibration, 0.0
        text, sampling = self.teacher_text(window_tokens(num_samples, self.args.calib_seq_len), SAMPLE_SEED)
        return {**calibration, "calib": [text]}, sampling

    def learned(self, model) -> dict:
        """What ``quantize(method="learned")`` does after its start (:func:`learn_quantization`): the scales
        and biases trained towards the float model on the start's calibration windows (``--learned-samples``
        of them), in place; the extra columns (tokens trained on, and the seconds of sampling any text
        beyond the start's: the start's own sampling is counted as the start's)."""
        from mlx_slm.data.windows import calibration_windows
        from mlx_slm.quant.learned import learn_quantization

        config = LearnedConfig(steps=self.args.learned_steps).check()
        calibration, sampling = self.start_calibration(self.args.learned_samples)
        more = sampling if self.args.learned_samples not in (None, self.args.num_samples) else 0.0
        tokens, _ = calibration_windows(**calibration)
        report = learn_quantization(model, self.reference, tokens, progress=False, **config.training())
        trained = report["steps_run"] * min(config.batch_size, len(tokens)) * tokens.shape[1]
        return {"tokens": trained, "learned_seconds": report["seconds"], "learned_sampling": more, "learned": report}

    def blockwise(self, start_folder: Path) -> tuple[Path, dict]:
        """Block-wise reconstruction of the row's start (saved in ``start_folder``) towards the float
        model: (the folder it is saved in, its extra columns). Run once per start and settings and saved
        (OUT/blockwise-DIGEST-START, :func:`saved_folder`), so ``blockwise+e2e`` starts from the very model
        the ``blockwise`` row measured, its block-wise seconds and tokens counted."""
        from mlx_slm.data.teacher_text import window_tokens
        from mlx_slm.data.windows import calibration_windows
        from mlx_slm.quant.blockwise import reconstruct_blocks
        from mlx_slm.quant.methods.blockwise import BlockwiseConfig

        args = self.args
        config = BlockwiseConfig(epochs=args.blockwise_epochs, learning_rate=args.blockwise_lr,
                                 scale_learning_rate=args.blockwise_scale_lr, inputs=args.blockwise_inputs,
                                 data=args.blockwise_data).check()
        settings = asdict(config)
        folder = saved_folder(self.out, "blockwise", settings, start_folder.name)
        record = folder / "blockwise.json"
        if not record.is_file():
            model, _ = mlx_slm.load(start_folder)
            tokens, _ = calibration_windows(**self.calibration)
            sampling = 0.0
            if config.data == "teacher":  # the windows quantize(method="blockwise", data="teacher") trains on
                # (Calibration.sampled at the config's seed), their text sampled once per run: every row's pass
                # trains on the same windows
                text, sampling = self.teacher_text(window_tokens(*tokens.shape), config.seed)
                tokens = calibration_windows(self.tokenizer, [text], *tokens.shape)[0]
            report = reconstruct_blocks(model, self.reference, tokens, config)
            save_step(model, self.tokenizer, folder, settings, "blockwise.json",
                      json.dumps({**report, "sampling_seconds": sampling}, default=str))
        report = json.loads(record.read_text())
        return folder, {"tokens": report["train_tokens"], "blockwise_seconds": report["seconds"],
                        "sampling_seconds": report["sampling_seconds"], "blockwise": report}

    def e2e_config(self, base: Path, start: str):
        """The :class:`E2EConfig` of end-to-end training from the model saved in ``base``: the benchmark's
        settings, the e2e method's defaults by the base's fewest bits (a mixed row's lowest) and start."""
        from mlx_slm.quant.methods.e2e import E2EConfig, default_adopt, default_rate
        from mlx_slm.runtime import lowest_bits

        args = self.args
        return E2EConfig(steps=args.e2e_steps, batch_size=args.e2e_batch_size,
                         learning_rate=args.e2e_lr or default_rate(lowest_bits(mlx_slm.load(base)[0])),
                         top_k=args.e2e_top_k, eval_every=args.e2e_eval_every, eval_windows=args.e2e_eval_windows,
                         data=args.e2e_data,
                         adopt=default_adopt(start) if args.e2e_adopt is None else args.e2e_adopt).check()

    def e2e_texts(self, config) -> tuple[str, str, float]:
        """The end-to-end run's training and held-out texts and the seconds sampling them took (0 for the
        calibration text's split)."""
        from mlx_slm.quant.methods.e2e import split_text

        if config.data == "teacher":
            text, seconds = self.teacher_text(config.teacher_tokens(self.args.calib_seq_len, config.seed), config.seed)
            return *split_text(text, config.held_out), seconds
        return (self.out / "train.txt").read_text(), (self.out / "heldout.txt").read_text(), 0.0

    def end_to_end(self, base: Path, config) -> tuple[Path, dict]:
        """What ``quantize(method="e2e")`` does after its start (:func:`train_end_to_end`) to the model
        saved in ``base``, on this benchmark's training and held-out texts, the teacher cache kept for
        every row: (the folder the result is saved in, its extra columns). Run once per base and
        settings and saved (OUT/e2e-DIGEST-BASE, :func:`saved_folder`), so ``e2e+learned``
        polishes the very model the ``e2e`` row measured, its training seconds and tokens counted."""
        from mlx_slm.quant.methods.e2e import train_end_to_end

        settings = {**asdict(config), "seq_len": self.args.calib_seq_len}
        folder = saved_folder(self.out, "e2e", settings, base.name)
        record = folder / "e2e.json"
        if not record.is_file():
            model, _ = mlx_slm.load(base)
            train, held, sampling = self.e2e_texts(config)
            began = time.perf_counter()
            report = train_end_to_end(model, self.reference, self.tokenizer, train, held, config,
                                      self.args.calib_seq_len, cache_dir=self.out / f"cache-{config.data}")
            seconds = time.perf_counter() - began
            save_step(model, self.tokenizer, folder, settings, "e2e.json", json.dumps(
                {"report": report, "seconds": seconds, "sampling_seconds": sampling}, default=str))
        saved = json.loads(record.read_text())
        report = saved["report"]
        return folder, {"tokens": report["train_tokens"], "e2e_heldout_kl": report["held_out_curve"], "e2e": report,
                        "e2e_seconds": saved["seconds"], "sampling_seconds": saved["sampling_seconds"]}

    def teacher_text(self, tokens: int, seed: int) -> tuple[str, float]:
        """Text sampled from the float model, as the methods' ``data="teacher"`` samples it, and the
        seconds that took: sampled once per token count and seed and kept in OUT (minutes of generation
        on a CPU), the seconds beside it."""
        from mlx_slm.data.teacher_text import sample_texts

        path, record = self.out / f"teacher-{tokens}-{seed}.txt", self.out / f"teacher-{tokens}-{seed}.seconds"
        if not (path.is_file() and record.is_file()):
            began = time.perf_counter()
            [text] = sample_texts(self.reference, self.tokenizer, [tokens], seed)
            seconds = time.perf_counter() - began
            with atomic_file(path) as tmp:
                tmp.write_text(text)
            with atomic_file(record) as tmp:
                tmp.write_text(f"{seconds}")
        return path.read_text(), float(record.read_text())

    def measure(self, row: dict, name: str, recipe: str) -> dict:
        folder, start_seconds = self.start(row, name)
        parts = recipe.split("+")
        extra = {"tokens": 0, "blockwise_seconds": 0.0, "sampling_seconds": 0.0}
        if parts[0] == "blockwise":
            folder, extra = self.blockwise(folder)
        e2e_seconds = 0.0
        if "e2e" in parts:
            config = self.e2e_config(folder, "blockwise" if parts[0] == "blockwise" else default_start(row["format"]))
            folder, e2e = self.end_to_end(folder, config)
            e2e_seconds = e2e.pop("e2e_seconds")
            extra = {**extra, **e2e, "tokens": extra["tokens"] + e2e["tokens"],
                     "sampling_seconds": extra["sampling_seconds"] + e2e["sampling_seconds"]}
        model, _ = mlx_slm.load(folder)
        if parts[-1] == "learned":
            learned = self.learned(model)
            sampling = learned.pop("learned_sampling")
            extra = {**extra, **learned, "tokens": extra["tokens"] + learned["tokens"],
                     "sampling_seconds": extra["sampling_seconds"] + sampling}
        train_seconds = (e2e_seconds + extra["blockwise_seconds"] + extra["sampling_seconds"]
                         + extra.get("learned_seconds", 0.0))
        report = mlx_slm.evaluate(model, self.tokenizer, reference=self.reference, **self.evaluate)
        label = default_start(row["format"]) if recipe == "start" else recipe
        return {"row": name, "recipe": label, **row, "train_seconds": train_seconds,
                "total_seconds": train_seconds + start_seconds, **extra, **report}


def table(rows: list[dict]) -> str:
    header = (f"{'row':<14}{'recipe':<15}{'bpw':>6}{'PPL':>14}{'KL':>9}{'top-1':>8}{'tokens':>10}"
              f"{'train s':>9}{'total s':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        kl = "-" if r.get("kld") is None else f"{r['kld']:.4f}"
        top1 = "-" if r.get("top1") is None else f"{r['top1']:.1%}"
        lines.append(f"{r['row']:<14}{r['recipe']:<15}{r['bpw']:>6.2f}{r['ppl']:>14.3f}{kl:>9}{top1:>8}"
                     f"{r['tokens']:>10}{r['train_seconds']:>9.0f}{r['total_seconds']:>9.0f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="float model folder or .gguf (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--out", default="runs/lowbit_training")
    parser.add_argument("--rows", default=DEFAULT_ROWS,
                        help="FORMAT:BITS:GROUP[:EMBED], comma-separated (EMBED: the embedding's affine bits)")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--num-samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration / training window")
    parser.add_argument("--start-data", default="calib", choices=DATA,
                        help="the start's calibration text: the calibration text, or text sampled from the "
                             "float model (quantize's --calib-data teacher)")
    parser.add_argument("--blockwise-epochs", type=int, default=2)
    parser.add_argument("--blockwise-lr", type=float, default=1e-3, help="the weights' rate, relative to a step")
    parser.add_argument("--blockwise-scale-lr", type=float, default=1e-3,
                        help="the rate of scales, biases, palettes and row scales, relative to their size")
    parser.add_argument("--blockwise-inputs", default="quantized", choices=("quantized", "float"))
    parser.add_argument("--blockwise-data", default="calib", choices=DATA,
                        help="block-wise training windows: the calibration windows, or as many of text sampled "
                             "from the float model (the start calibrates on the calibration text either way)")
    parser.add_argument("--e2e-steps", type=int, default=40)
    parser.add_argument("--e2e-batch-size", type=int, default=4)
    parser.add_argument("--e2e-lr", type=float, default=None,
                        help="relative to each layer's step size (default: the e2e method's, by the row's bits)")
    parser.add_argument("--e2e-top-k", type=int, default=256, help="teacher logits cached per position")
    parser.add_argument("--e2e-eval-every", type=int, default=10)
    parser.add_argument("--e2e-eval-windows", type=int, default=4)
    parser.add_argument("--e2e-data", default="calib", choices=DATA,
                        help="train on the calibration text's first 95%% (its last 5%% held out), or on text "
                             "sampled from the float model (its last 5%% held out; kept in OUT)")
    parser.add_argument("--e2e-adopt", action=argparse.BooleanOptionalAction, default=None,
                        help="latent weights start at the float model's where those round to the start's codes "
                             "(default: the e2e method's, by the start)")
    parser.add_argument("--learned-steps", type=int, default=LearnedConfig.steps,
                        help="most steps of the learned recipe (the learned method's other settings as its defaults)")
    parser.add_argument("--learned-samples", type=int, default=None,
                        help="windows the learned recipe trains on, of the start's text (default: --num-samples)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per evaluation window")
    parser.add_argument("--max-windows", type=int, default=8, help="evaluation windows")
    parser.add_argument("--resume", action="store_true", help="keep rows measured with the same settings")
    return parser


RUN_ONLY = ("out", "rows", "recipes", "resume")  # arguments that are not settings of a measurement


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = set(recipes) - set(RECIPES)
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}; choose from {', '.join(RECIPES)}")
    try:
        named_rows = {name: parse_row(name) for name in args.rows.split(",") if name}
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in RUN_ONLY}
    path = out / "lowbit_training.json"
    rows = earlier_rows(path, settings, parser) if args.resume else []
    out.mkdir(parents=True, exist_ok=True)
    texts = write_texts(out)
    bench = Bench(args, out)
    if not any(r["recipe"] == "fp16" for r in rows):
        report = mlx_slm.evaluate(bench.reference, bench.tokenizer, **bench.evaluate)
        rows.insert(0, {"row": "fp16", "recipe": "fp16", "tokens": 0, "train_seconds": 0, "total_seconds": 0,
                        **report})
    for name, row in named_rows.items():
        for recipe in recipes:
            label = default_start(row["format"]) if recipe == "start" else recipe
            if any(r["row"] == name and r["recipe"] == label for r in rows):
                continue
            rows.append(bench.measure(row, name, recipe))
            print(table(rows).splitlines()[-1], flush=True)
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps({"texts": texts, "settings": settings, "rows": rows}, indent=1,
                                          default=str))
    print()
    print(table(rows))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    interrupt.install()  # run as a script: Ctrl-C or SIGTERM takes this run's scratch folders with it
    main()
