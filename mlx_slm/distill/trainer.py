"""Teacher -> student distillation on local text, written as MLX array ops.

The student may be a pruned copy of the teacher, a copy trained through fake
quantization (``qat``), or a smaller model with the same tokenizer. On a CPU the
student trains in float32 and the teacher runs in float32 with its quantized
layers dequantized (:func:`mlx_slm.runtime.fast_cpu`); the student's floats go
back to their saved dtype at the end.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from tqdm import tqdm

from ..backend import require_mlx
from ..errors import SLMError
from ..model_access import require_training
from ..progress import hidden
from ..runtime import computes_on_cpu, fast_cpu, restore_dtypes, widen_floats
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DistillConfig
from .data import WindowBatches, held_out_windows
from .hooks import decoder_layers, gradient_checkpointing, layer_outputs
from .losses import feature_loss, kd_loss
from .qat import QuantizedTraining, add_fake_quant, remove_fake_quant
from .sparsity import GradualPruning
from .teacher_cache import TeacherCache


class Trainee(nn.Module):
    """What the optimizer updates: the student and, for feature distillation, its projections."""

    def __init__(self, student, projections: list):
        super().__init__()
        self.student = student
        self.projections = projections


def vocabulary_size(model, tokens: mx.array) -> int:
    return model(tokens[:, :2]).shape[-1]


def check_pair(student, teacher, tokenizer, teacher_tokenizer) -> None:
    require_training("distillation", student, teacher)
    if teacher_tokenizer is not None and teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise SLMError("the teacher and student tokenizers differ; distillation needs the same vocabulary")
    probe = mx.array([[0, 1]])
    if vocabulary_size(student, probe) != vocabulary_size(teacher, probe):
        raise SLMError("the teacher's and student's vocabularies differ in size; they must share a tokenizer")


class Best:
    """The lowest held-out KL seen, and (``keep_best``) the student's trainable parameters then:
    MLX arrays are immutable, so keeping them costs one more copy of what trains, no more.
    Every rank evaluates the same windows, so every rank decides alike. After a resume it
    follows the evaluations since."""

    def __init__(self, student, config: DistillConfig):
        self.student, self.config = student, config
        self.kl, self.step, self.state, self.waited = math.inf, None, None, 0

    def after_evaluation(self, step: int, kl: float) -> bool:
        """Record an evaluation; True when ``patience`` evaluations in a row brought no lower KL."""
        if kl < self.kl:
            self.kl, self.step, self.waited = kl, step, 0
            if self.config.keep_best:
                self.state = tree_flatten(self.student.trainable_parameters())
            return False
        self.waited += 1
        return bool(self.config.patience) and self.waited >= self.config.patience

    def restore(self) -> None:
        """With ``keep_best``, put the best parameters back into the student."""
        if self.state is not None:
            self.student.update(tree_unflatten(self.state))
            mx.eval(self.student.parameters())


def learning_rate_schedule(config: DistillConfig):
    decay = optim.cosine_decay(config.learning_rate, max(config.steps - config.warmup_steps, 1),
                               config.learning_rate * 0.1)
    if not config.warmup_steps:
        return decay
    warmup = optim.linear_schedule(config.learning_rate / config.warmup_steps, config.learning_rate,
                                   config.warmup_steps)
    return optim.join_schedules([warmup, decay], [config.warmup_steps])


def feature_pairs(student, teacher, config: DistillConfig) -> tuple[list, list, list]:
    """(student layers, teacher layers, projections) for hidden-state distillation."""
    if not config.feature_weight:
        return [], [], []
    student_count, teacher_count = len(decoder_layers(student)), len(decoder_layers(teacher))
    chosen = list(config.feature_layers) or [student_count - 1]
    if any(not 0 <= i < student_count for i in chosen):
        raise SLMError(f"feature_layers must lie in 0..{student_count - 1}")
    mapped = [round((i + 1) * teacher_count / student_count) - 1 for i in chosen]
    probe = mx.array([[0, 1]])
    with layer_outputs(student, chosen) as s_out, layer_outputs(teacher, mapped) as t_out:
        student(probe), teacher(probe)
    projections = []
    for i, j in zip(chosen, mapped):
        width_s, width_t = s_out[i].shape[-1], t_out[j].shape[-1]
        projections.append(nn.Linear(width_s, width_t, bias=False) if width_s != width_t else None)
    return chosen, mapped, projections


class Distiller:
    """One run: ``Distiller(...).run()`` returns the history (a dict per step)."""

    def __init__(self, student, teacher, tokenizer, text, config: DistillConfig, eval_text=None,
                 progress: bool = True, teacher_tokenizer=None):
        require_mlx("distillation")
        config.check()
        check_pair(student, teacher, tokenizer, teacher_tokenizer)
        self.student, self.teacher, self.config, self.progress = student, teacher, config, progress
        self.group = mx.distributed.init()
        self.rank, self.world = self.group.rank(), self.group.size()
        self.data = WindowBatches(tokenizer, text, config.seq_len, config.batch_size, config.grad_accum,
                                  config.seed, self.rank, self.world)
        self.eval_windows = (held_out_windows(tokenizer, eval_text, config.seq_len, config.eval_windows)
                             if eval_text is not None and config.eval_every else None)
        if (config.keep_best or config.patience) and self.eval_windows is None:
            raise SLMError("keep_best and patience follow the held-out KL: give eval text")
        self.cache = (TeacherCache(config.cache_dir, teacher, self.data.windows, config.teacher_top_k,
                                   self.data.used_windows(config.steps), progress=progress and self.rank == 0,
                                   temperature=config.temperature)
                      if config.teacher_top_k else None)
        self.student_layers, self.teacher_layers, projections = feature_pairs(student, teacher, config)
        self.trainee = Trainee(student, projections)
        self.pruning = GradualPruning(student, config.sparsity, config.steps) if config.sparsity else None
        self.loss_and_grad = nn.value_and_grad(self.trainee, self.loss)
        self.optimizer = optim.AdamW(learning_rate=learning_rate_schedule(config),
                                     weight_decay=config.weight_decay)

    def teacher_targets(self, rows, inputs):
        """(teacher logits or top-k values, top-k indices or None, teacher hidden states, the
        teacher's logsumexp when the loss keeps the mass outside the top k (``top_k_tail``) or None)."""
        if self.cache is not None:
            values, indices, lse = self.cache.lookup(rows)
            return values, indices, [], lse if self.config.top_k_tail else None
        with layer_outputs(self.teacher, self.teacher_layers) as hidden:
            logits = self.teacher(inputs)
        return mx.stop_gradient(logits), None, [mx.stop_gradient(hidden[j]) for j in self.teacher_layers], None

    def loss(self, trainee, inputs, targets, teacher_logits, teacher_indices, teacher_hidden, teacher_lse):
        config = self.config
        with layer_outputs(trainee.student, self.student_layers) as hidden:
            logits = trainee.student(inputs)
        mask = mx.ones(targets.shape)
        loss, parts = kd_loss(logits, targets, mask, teacher_logits, teacher_indices, config.alpha,
                              config.temperature, config.divergence, config.skew, teacher_lse)
        if config.feature_weight:
            parts["feature"] = feature_loss([hidden[i] for i in self.student_layers], teacher_hidden,
                                            trainee.projections)
            loss = loss + config.feature_weight * parts["feature"]
        return loss, parts

    def step(self, step: int) -> dict:
        total, sums, grads = 0.0, {}, None
        for micro in range(self.config.grad_accum):
            rows, inputs, targets = self.data.batch(step, micro)
            inputs, targets = mx.array(inputs), mx.array(targets)
            teacher = self.teacher_targets(rows, inputs)
            (loss, parts), micro_grads = self.loss_and_grad(self.trainee, inputs, targets, *teacher)
            grads = micro_grads if grads is None else tree_map(mx.add, grads, micro_grads)
            mx.eval(grads, loss, parts)
            total += loss.item()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.item()
        grads = tree_map(lambda g: g / self.config.grad_accum, grads)
        if self.world > 1:
            grads = nn.average_gradients(grads)
        self.optimizer.update(self.trainee, grads)
        record = {"loss": total / self.config.grad_accum}
        if self.pruning is not None:
            record["sparsity"] = self.pruning.after_step(self.student, step)
        mx.eval(self.trainee.parameters(), self.optimizer.state)
        record.update({k: v / self.config.grad_accum for k, v in sums.items()})
        if self.world > 1:
            names = [k for k in record if k != "sparsity"]
            averaged = mx.distributed.all_sum(mx.array([record[k] for k in names]), group=self.group) / self.world
            record.update(zip(names, averaged.tolist()))
        return record

    def evaluate(self) -> dict:
        """KL(teacher || student) per token and the student's perplexity on the held-out windows."""
        inputs, targets = mx.array(self.eval_windows[:, :-1]), mx.array(self.eval_windows[:, 1:])
        _, parts = kd_loss(self.student(inputs), targets, mx.ones(targets.shape), self.teacher(inputs),
                           alpha=1.0, temperature=1.0)
        return {"eval_kl": parts["kd"].item(), "eval_ppl": float(np.exp(parts["ce"].item()))}

    def run(self, resume: bool = False) -> list[dict]:
        config = self.config
        qat_paths = add_fake_quant(self.student, config.qat) if config.qat else []
        quantized = None
        if config.train_quantized:
            quantized = QuantizedTraining(self.student, self.teacher if config.adopt else None).attach()
        dtypes = widen_floats(self.student) if computes_on_cpu() else {}
        history, first = [], 0
        if resume:
            state = load_checkpoint(config.checkpoint_dir, self.trainee, self.optimizer)
            history, first = state["history"], state["step"] + 1
        shown, best = {}, Best(self.student, config)
        bar = tqdm(range(first, config.steps), desc="distilling", disable=hidden(self.progress and self.rank == 0),
                   initial=first, total=config.steps)
        try:
            with fast_cpu(self.teacher), gradient_checkpointing(self.student, config.grad_checkpoint):
                for step in bar:
                    start = time.perf_counter()
                    record = {"step": step, **self.step(step)}
                    record["tokens_per_s"] = self.data.tokens_per_step / (time.perf_counter() - start)
                    if config.eval_every and self.eval_windows is not None and (step + 1) % config.eval_every == 0:
                        record.update(self.evaluate())
                    history.append(record)
                    shown.update(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    if "eval_kl" in record:
                        shown["held_out_kl"] = f"{record['eval_kl']:.4f}"
                        record["stopped_early"] = best.after_evaluation(step, record["eval_kl"])
                    bar.set_postfix(shown)
                    if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and self.rank == 0:
                        save_checkpoint(config.checkpoint_dir, step, self.trainee, self.optimizer,
                                        {"history": history, "config": asdict(config)})
                    if record.get("stopped_early"):
                        break
            best.restore()
        finally:
            bar.close()
            if qat_paths:
                remove_fake_quant(self.student)
            restore_dtypes(self.student, dtypes)
            if quantized is not None:
                quantized.detach()
        return history


def distill(student, teacher, tokenizer, text, config: DistillConfig | None = None, eval_text=None,
            resume: bool = False, progress: bool = True, teacher_tokenizer=None) -> list[dict]:
    """Train ``student`` in place to match ``teacher`` on ``text``; return the per-step history.

    student, teacher: MLX models sharing ``tokenizer`` (pass ``teacher_tokenizer``
    to have that checked). text / eval_text: .txt / .jsonl paths or lists of strings.
    resume: continue from the newest checkpoint in ``config.checkpoint_dir``.
    Each history entry has step, loss, ce, kd (and feature), tokens_per_s and, every
    ``eval_every`` steps, eval_kl and eval_ppl.
    """
    config = config or DistillConfig()
    return Distiller(student, teacher, tokenizer, text, config, eval_text, progress, teacher_tokenizer).run(resume)
