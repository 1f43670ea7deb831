"""Method "e2e": the start method, then end-to-end quantization-aware training of the whole model:
every decoder layer's float weights and step sizes trained through the format's rounding on the
float model's cached top-k logits (:func:`mlx_slm.distill.distill` with ``train_quantized``; MLX only).

It trains on the calibration text, or (``data="teacher"``) on text sampled from the float
model itself (:mod:`mlx_slm.data.teacher_text`, LLM-QAT's data-free recipe), as many tokens as
the steps read. The text is split: its last ``held_out`` fraction is never trained on. Every
``eval_every`` steps the trainer scores its first ``eval_windows`` windows (KL(float || model)
per token, full vocabulary) and training ends in the state of the lowest score (``patience``
stops it early); the saved model is then scored on the same windows and kept only if it beats
the start's score there, else the start is restored. The start's score is the curve's point at
0 tokens, and the saved model's equals the best point's (what trains is what is saved).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace

from ...data.teacher_text import DATA
from ...errors import SLMError
from ...interrupt import scratch
from . import Method, MethodOptions, option, register
from .blockwise import default_start

STARTS = ("rtn", "imatrix", "gptq", "awq", "blockwise")


@dataclass
class E2EConfig(MethodOptions):
    """Settings of the end-to-end run (the distillation trainer's, at temperature 1, KL only)."""

    start: str | None = option(None, "the method whose result is trained (default: gptq for the affine and "
                                     "ternary formats, imatrix for lut)", choices=STARTS)
    steps: int = option(100, "training steps (each batch_size windows of --seq-len tokens)")
    batch_size: int = option(4, "windows per step")
    learning_rate: float | None = option(None, "Adam's rate, relative to each layer's quantization step "
                                               "(default, by the start's fewest bits: 1e-3 at 2 bits, 1e-4 "
                                               "above, where 1e-3 moves a good start away from the float model)")
    top_k: int = option(256, "teacher logits cached per position")
    eval_every: int = option(10, "steps between held-out evaluations; training ends in the state of the best")
    patience: int = option(0, "stop after this many evaluations without a lower held-out KL (0: never)")
    eval_windows: int = option(4, "held-out windows of --seq-len tokens")
    held_out: float = option(0.05, "fraction at the end of the calibration text never trained on")
    seed: int = option(0, "seed of the window order (and of the teacher's sampling)")
    data: str = option("calib", "what it trains on: 'calib', the calibration text, or 'teacher', text sampled "
                                "from the float model (as many tokens as the steps read; data-free, as "
                                "LLM-QAT); the held-out windows come from the same text", choices=DATA)
    adopt: bool | None = option(None, "start each layer's latent weights at the float model's wherever those "
                                      "round to the start's codes, else at the codes' values (default: after rtn "
                                      "and imatrix, not after gptq, awq or blockwise; see default_adopt)")

    def check(self) -> E2EConfig:
        if self.start is not None and self.start not in STARTS:
            raise SLMError(f"e2e start must be one of {', '.join(STARTS)}, not {self.start!r}")
        for name in ("steps", "batch_size", "top_k", "eval_every", "eval_windows"):
            if getattr(self, name) < 1:
                raise SLMError(f"e2e {name} must be at least 1, not {getattr(self, name)}")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise SLMError(f"e2e learning_rate must be a positive number, not {self.learning_rate}")
        if self.patience < 0:
            raise SLMError(f"e2e patience must be 0 (never stop early) or more, not {self.patience}")
        if not 0 < self.held_out < 1:
            raise SLMError(f"e2e held_out must be between 0 and 1, not {self.held_out}")
        if self.data not in DATA:
            raise SLMError(f"e2e data must be one of {', '.join(DATA)}, not {self.data!r}")
        return self

    def uses(self, weight_format: str) -> tuple[str, ...]:
        return (self.start or default_start(weight_format),)

    def teacher_tokens(self, seq_len: int, seed: int) -> int:
        """With ``data="teacher"`` at this ``seed``: what the steps read, plus the held-out fraction."""
        if self.data != "teacher" or seed != self.seed:
            return 0
        return math.ceil(self.steps * self.batch_size * seq_len / (1 - self.held_out))


def default_rate(bits: int) -> float:
    """The learning rate when none is given, by the fewest bits any layer of the start stores (a mixed
    plan, ``target_bpw`` or a per-layer config, counts its lowest): 1e-3 for 2-bit and ternary starts,
    which are far from the float model, 1e-4 for 3 bits and more."""
    return 1e-3 if bits <= 2 else 1e-4


NEAREST_STARTS = ("rtn", "imatrix")  # starts whose codes are the float weights' nearest


def default_adopt(start: str) -> bool:
    """Whether the latent weights adopt the float model's when none is said: after a start whose codes
    are the float weights' nearest (then every weight adopts, the usual QAT start), not after one that
    moved weights to other codes to cancel errors (gptq, awq's scaled weights, block-wise training),
    where adopting the weights that kept their nearest code measured worse at 2 bits."""
    return start in NEAREST_STARTS


def split_text(text: str, held_out: float) -> tuple[str, str]:
    """(training part, held-out part): the last ``held_out`` of the characters, cut at a line break."""
    cut = int(len(text) * (1 - held_out))
    line = text.rfind("\n", 0, cut)
    cut = line if line > 0 else cut
    return text[:cut], text[cut:]


def train_end_to_end(model, teacher, tokenizer, train_text: str, held_text: str, config: E2EConfig, seq_len: int,
                     progress: bool = True, cache_dir=None) -> dict:
    """Train the quantized ``model`` end to end towards ``teacher`` on ``train_text`` in windows of
    ``seq_len`` tokens; keep the result only if the KL on ``held_text`` dropped. ``config`` must
    name its learning rate and whether to adopt (:func:`default_rate`, :func:`default_adopt` give the
    method's). Returns the report
    (start_kl, final_kl, kept_start, train_tokens, held_out_curve [[step, KL]] from [0, start_kl], seconds).
    cache_dir: where the teacher's top-k logits are kept (None: a temporary folder)."""
    from mlx.utils import tree_flatten, tree_unflatten

    from ...distill import DistillConfig, distill
    from ...distill.data import held_out_windows
    from ...runtime import fast_cpu
    from ..blockwise import held_out_kl

    if config.learning_rate is None or config.adopt is None:
        raise SLMError("train_end_to_end needs config.learning_rate and config.adopt (default_rate(bits) and "
                       "default_adopt(start) are the method's)")
    held = held_out_windows(tokenizer, [held_text], seq_len, config.eval_windows)[:, :-1]  # the trainer's
    started = time.perf_counter()
    with fast_cpu(teacher):
        start_kl = held_out_kl(model, teacher, held)
    start_state = tree_flatten(model.parameters())  # immutable arrays: keeping them costs no copy
    with tempfile.TemporaryDirectory(prefix="mlx-slm-e2e-") as work, scratch(work):
        trainer = DistillConfig(steps=config.steps, batch_size=config.batch_size, seq_len=seq_len,
                                learning_rate=config.learning_rate, warmup_steps=min(10, config.steps // 10),
                                alpha=0.0, temperature=1.0, teacher_top_k=config.top_k, top_k_tail=True,
                                cache_dir=str(cache_dir or work), eval_every=config.eval_every,
                                eval_windows=config.eval_windows, seed=config.seed, keep_best=True,
                                patience=config.patience, train_quantized=True, adopt=config.adopt)
        history = distill(model, teacher, tokenizer, [train_text], trainer, eval_text=[held_text], progress=progress)
    with fast_cpu(teacher):
        final_kl = held_out_kl(model, teacher, held)
    kept_start = not final_kl < start_kl
    if kept_start:
        model.update(tree_unflatten(start_state))
    return {**asdict(config), "start_kl": start_kl, "final_kl": final_kl, "kept_start": kept_start,
            "train_tokens": len(history) * config.batch_size * seq_len,
            "held_out_curve": [[0, start_kl]] + [[r["step"] + 1, r["eval_kl"]] for r in history if "eval_kl" in r],
            "seconds": time.perf_counter() - started}


def run(model, settings, calibration, progress):
    from ...data.teacher_text import sample_texts
    from ...data.text import read_text
    from ...quantize import float_teacher, record_result, run_method
    from ...runtime import lowest_bits

    config = settings.options_of("e2e")
    start = config.start or default_start(settings.format)
    config = replace(config, start=start, adopt=default_adopt(start) if config.adopt is None else config.adopt)
    if calibration.text is None:
        raise SLMError("method 'e2e' needs a calibration text (its start's, and its training text unless "
                       "data='teacher'): pass calib=<.txt/.jsonl or strings> (--calib), or calib_data='teacher' "
                       "(--calib-data teacher) to sample it from the float model")
    teacher = float_teacher(model)
    if config.data == "teacher":
        tokens = config.teacher_tokens(calibration.seq_len, config.seed)
        text = calibration.sampled_texts.get((tokens, config.seed))  # sampled with a sampled calibration's
        if text is None:
            [text] = sample_texts(teacher, calibration.tokenizer, [tokens], config.seed, progress)
    else:
        text = read_text(calibration.text)
    train_text, held_text = split_text(text, config.held_out)
    run_method(model, replace(settings, method=config.start), calibration, progress)
    config = replace(config, learning_rate=config.learning_rate or default_rate(lowest_bits(model)))
    report = train_end_to_end(model, teacher, calibration.tokenizer, train_text, held_text, config,
                              calibration.seq_len, progress)
    record_result(model, method="e2e", e2e=report)
    return model


def report(record: dict) -> str:
    done = record["e2e"]
    source = " on text sampled from the float model" if done.get("data") == "teacher" else ""
    return (f"e2e from {done['start']}{source}: held-out KL {done['start_kl']:.4f} -> {done['final_kl']:.4f}"
            + (" (the start was kept)" if done["kept_start"] else "")
            + f" ({done['train_tokens']} tokens trained, {done['seconds']:.0f} s)")


register(Method("e2e", "MLX only, any format: the start (gptq or imatrix), then the whole model's weights and "
                       "step sizes trained through the format's rounding by KL distillation from the float "
                       "model on the calibration text, kept only if the held-out KL drops", run, E2EConfig,
                calibrated=True, training=True, report=report, rank=6))
