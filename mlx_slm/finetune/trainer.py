"""LoRA / DoRA / QLoRA training: mlx-lm's layers, batching and loss in a resumable loop.

From mlx-lm: the adapter layers (``linear_to_lora_layers``), the datasets, the
batching (``iterate_batches``: length-sorted batches padded to a multiple of 32)
and the loss (``default_loss``: cross-entropy over completion tokens), and the
compiled step of its ``train``. Written here instead of calling ``train``: the
data order is a pure function of (seed, step) so a run resumes exactly; the
adapter folder is written atomically with the optimizer state; progress is a tqdm
bar and the history is returned; the base computes in float32 on a CPU
(:mod:`.precision`).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from mlx import nn
from mlx_lm.tuner.trainer import default_loss, iterate_batches
from mlx_lm.tuner.trainer import evaluate as mean_loss
from tqdm import tqdm

from ..distill.hooks import gradient_checkpointing
from ..errors import SLMError
from ..model_access import require_training
from ..progress import hidden
from .adapters import add_adapters, resume_state, save_adapters
from .data import load_dataset
from .precision import training_precision


def batches(dataset, batch_size: int, max_length: int, seed: int, first_step: int = 0):
    """Endless ``(tokens [B, L], lengths [B, 2])`` batches; step s's batch depends only on (seed, s).

    Each epoch is one pass of mlx-lm's ``iterate_batches`` seeded with ``seed + epoch``.
    """
    per_epoch = len(dataset) // batch_size
    epoch, skip = divmod(first_step, per_epoch)
    while True:
        for index, batch in enumerate(iterate_batches(dataset, batch_size, max_length, seed=seed + epoch)):
            if index >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def check_settings(model, steps: int, batch_size: int, learning_rate: float, seq_len: int, eval_every: int,
                   save_every: int) -> None:
    require_training("fine-tuning", model)
    if steps < 1 or batch_size < 1 or seq_len < 2 or learning_rate <= 0:
        raise SLMError(f"need steps >= 1, batch_size >= 1, seq_len >= 2 and learning_rate > 0, not {steps}, "
                       f"{batch_size}, {seq_len} and {learning_rate}")
    if eval_every < 0 or save_every < 0:
        raise SLMError("eval_every and save_every must be >= 0 (0: never)")


def checked_dataset(path, tokenizer, batch_size: int, seq_len: int, mask_prompt: bool, role: str):
    dataset = load_dataset(path, tokenizer, seq_len + 1, mask_prompt)
    if len(dataset) < batch_size:
        raise SLMError(f"the {role} data {path} has {len(dataset)} examples, fewer than one batch of {batch_size}")
    return dataset


def finetune(model, tokenizer, train_jsonl, *, method: str = "lora", rank: int = 8, scale: float = 20.0,
             dropout: float = 0.0, num_layers: int = -1, keys=None, steps: int = 100, batch_size: int = 4,
             learning_rate: float = 1e-5, seq_len: int = 512, valid_jsonl=None, eval_every: int = 0,
             save_every: int = 100, adapter_dir=None, resume: bool = False, overwrite: bool = False,
             grad_checkpoint: bool = False, mask_prompt: bool = False, seed: int = 0,
             progress: bool = True) -> list[dict]:
    """Add LoRA/DoRA layers to ``model`` (in place) and train them on ``train_jsonl``.

    model: an MLX model; if its linear layers are affine-quantized this is QLoRA (the
    base stays quantized in the model). train_jsonl / valid_jsonl: JSONL files of text,
    prompt/completion or chat records (:mod:`.data`). rank, scale, dropout, num_layers
    (last N decoder layers, -1 all), keys (paths inside a decoder layer; None: every
    linear layer): mlx-lm's LoRA parameters. Adam with ``learning_rate``; batches of
    ``batch_size`` examples of at most ``seq_len`` input tokens (longer ones truncated).
    mask_prompt: train on completions only (prompt/chat records).
    adapter_dir: written atomically every ``save_every`` steps and at the end (mlx-lm's
    layout plus optimizer state); resume: continue the run saved there.
    Returns the history: one dict per step (step, loss, tokens, tokens_per_s; every
    ``eval_every`` steps val_loss, the mean loss per token over ``valid_jsonl``).
    """
    check_settings(model, steps, batch_size, learning_rate, seq_len, eval_every, save_every)
    if resume and adapter_dir is None:
        raise SLMError("resume needs adapter_dir, the folder of the run to continue")
    if adapter_dir is not None and Path(adapter_dir).exists() and not (resume or overwrite):
        raise SLMError(f"{adapter_dir} already exists (pass resume=True to continue it or overwrite=True)")
    train = checked_dataset(train_jsonl, tokenizer, batch_size, seq_len, mask_prompt, "training")
    valid = (checked_dataset(valid_jsonl, tokenizer, batch_size, seq_len, mask_prompt, "validation")
             if valid_jsonl is not None else None)
    mx.random.seed(seed)
    config = add_adapters(model, method, rank, scale, dropout, num_layers, keys)
    config.update({"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "seq_len": seq_len,
                   "mask_prompt": mask_prompt, "seed": seed, "data": str(train_jsonl)})
    optimizer = optim.Adam(learning_rate=learning_rate)
    history, first = [], 0
    if resume:
        state = resume_state(adapter_dir, model, optimizer)
        if state.get("adapter_config", {}).get("lora_parameters") != config["lora_parameters"] or \
                state["adapter_config"].get("fine_tune_type") != method:
            raise SLMError(f"{adapter_dir} was trained with other adapter settings "
                           f"({state.get('adapter_config', {}).get('lora_parameters')}); resume with the same ones")
        history, first = state["history"], state["step"]

    def save(step: int) -> None:
        if adapter_dir is not None:
            save_adapters(adapter_dir, model, config, optimizer,
                          {"step": step, "history": history, "adapter_config": config})

    loss_and_grad = nn.value_and_grad(model, default_loss)
    bar = tqdm(total=steps, initial=first, desc=f"{method} fine-tuning", disable=hidden(progress))
    with training_precision(model), gradient_checkpointing(model, grad_checkpoint):
        mx.eval(model.parameters())
        state = [model.state, optimizer.state, mx.random.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def train_step(tokens, lengths):
            (loss, count), grads = loss_and_grad(model, tokens, lengths)
            optimizer.update(model, grads)
            return loss, count

        model.train()
        try:
            for step, (tokens, lengths) in zip(range(first, steps),
                                               batches(train, batch_size, seq_len + 1, seed, first)):
                start = time.perf_counter()
                loss, count = train_step(tokens, lengths)
                mx.eval(state, loss, count)
                seconds = time.perf_counter() - start
                record = {"step": step + 1, "loss": loss.item(), "tokens": count.item(),
                          "tokens_per_s": count.item() / seconds}
                if valid is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
                    record["val_loss"] = mean_loss(model, valid, batch_size, -1, seq_len + 1)
                    model.train()
                history.append(record)
                bar.update()
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
                    save(step + 1)
        finally:
            bar.close()
            model.eval()
    save(history[-1]["step"] if history else first)
    return history
