"""Block-wise reconstruction: train each decoder block through its format's exact rounding.

For a model whose decoder blocks are already quantized (by gptq, imatrix, rtn, ...),
each block in order gets :mod:`.fake_quant` twins of its quantized linear layers:
float32 weights seen through the format's rounding plus the format's own
parameters (affine scales and biases; lut palettes and row scales; ternary scales),
all trained with Adam to minimise the squared error (per token, relative to the
token's size) between the block's output and the float model's block output on the
calibration windows (EfficientQAT's Block-AP; the twins start exactly at the given
quantization, so training starts from the gptq solution rather than from
round-to-nearest). The block is then rounded once and stored in its format;
everything else in the model is left as it was.

Inputs (``BlockwiseConfig.inputs``): "quantized" trains block i on the output of the
already-trained quantized blocks before it, against the float model's output of
block i on the float model's own activations (so each block also corrects the drift
of the ones before it); "float" trains on the float model's activations. The target
is the float model's block output either way.

Each block keeps its start unless its error on held-out windows got lower, so no
block ends worse than its start on those windows; and the whole model keeps its start
unless its KL to the float model on those windows got lower (lower error in every
block does not guarantee it: on a ternary SmolLM2 every block's error fell and the
model's KL rose). With ``BlockwiseConfig.checkpoint`` every finished block is saved and a rerun
resumes after the last one (:mod:`.block_checkpoints`). Memory: the windows' activations (inputs, targets, and the next
inputs: three arrays [S, T, D] float32) plus one block's training state, never the
whole model's gradients. Blocks are found through
``model.layers`` and called as ``block(x, mask, cache=None)`` with the masks the
model's own forward pass gives each layer, so any mlx-lm architecture with that
layout runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn
from mlx.utils import tree_flatten, tree_unflatten
from tqdm import tqdm

from ..calib.mlx_blocks import block_inputs, block_masks, blocks_of
from ..distill.losses import kl, log_softmax
from ..errors import SLMError
from ..model_access import require_training
from ..progress import hidden
from ..runtime import fast_cpu, restore_dtypes, widen_floats
from .block_checkpoints import BlockCheckpoints, fingerprint
from .fake_quant import QUANT_PARAMS, make_twin, reference_weights, store_twin
from .methods.blockwise import BlockwiseConfig


def held_out_kl(model, teacher, tokens: np.ndarray) -> float:
    """Mean per-token KL(teacher || model) over windows ``tokens`` [S, T], the full vocabulary (teacher
    already under :func:`mlx_slm.runtime.fast_cpu`)."""
    total = 0.0
    with fast_cpu(model):
        for window in tokens:
            x = mx.array(window[None])
            log_t, log_s = (log_softmax(m(x).astype(mx.float32)) for m in (teacher, model))
            total += kl(log_t, log_s).mean().item()
    return total / len(tokens)


def run_block(block, x: mx.array, mask, batch_size: int) -> mx.array:
    out = []
    for first in range(0, len(x), batch_size):
        out.append(block(x[first:first + batch_size], mask, cache=None).astype(mx.float32))
        mx.eval(out[-1])
    return mx.concatenate(out)


def quantized_linears(block, reference=None) -> list:
    """(path inside the block, module, twin) of every quantized linear layer that can train; the twins'
    latent weights start from the float weights of ``reference`` (the float model's block) where those
    round to the stored codes."""
    floats = reference_weights(reference)
    found = []
    for path, module in block.named_modules():
        twin = make_twin(module, floats.get(path))
        if twin is not None:
            found.append((path, module, twin))
    return found


class BlockTrainer:
    """Trains one block's twins on (inputs, targets); keeps the best held-out state."""

    def __init__(self, block, twins: dict, mask, config: BlockwiseConfig):
        self.block, self.twins, self.mask, self.config = block, twins, mask, config
        self.loss_and_grad = nn.value_and_grad(block, self.loss)
        self.optimizers = {"weights": optim.Adam(learning_rate=config.learning_rate),
                           "quant": optim.Adam(learning_rate=config.scale_learning_rate)}

    def loss(self, x, y):
        """Mean over tokens of the squared error relative to the token's size, target's and output's
        (a few tokens carry activations thousands of times larger than the rest, in the float model or
        in the quantized one: unweighted, or weighted by the target alone, they would decide everything)."""
        out = self.block(x, self.mask, cache=None)
        size = mx.stop_gradient(mx.square(y).mean(axis=-1) + mx.square(out).mean(axis=-1)) + 1e-6
        return mx.mean(mx.square(out - y).mean(axis=-1) / size)

    def error(self, x: mx.array, y: mx.array) -> float:
        """:meth:`loss` averaged over the windows ``x`` / ``y`` [S, T, D], in batches."""
        size, total = self.config.batch_size, 0.0
        for first in range(0, len(x), size):
            rows = slice(first, first + size)
            total += self.loss(x[rows], y[rows]).item() * len(x[rows])
        return total / len(x)

    def step(self, x, y) -> float:
        loss, grads = self.loss_and_grad(x, y)
        params = dict(tree_flatten(self.block.trainable_parameters()))
        grads = {name: g for name, g in tree_flatten(grads) if name.rsplit(".", 1)[0] in self.twins}
        updated = {}
        for kind, optimizer in self.optimizers.items():
            names = [n for n in grads if (n.rsplit(".", 1)[-1] in QUANT_PARAMS) == (kind == "quant")]
            if names:
                updated.update(optimizer.apply_gradients({n: grads[n] for n in names},
                                                         {n: params[n] for n in names}))
        self.block.update(tree_unflatten(list(updated.items())))
        mx.eval(updated, [o.state for o in self.optimizers.values()], loss)
        return loss.item()

    def state(self) -> list:
        return [(f"{path}.{name}", value) for path, twin in self.twins.items()
                for name, value in tree_flatten(twin.trainable_parameters())]

    def run(self, train: tuple, held: tuple) -> dict:
        config = self.config
        rng = np.random.default_rng(config.seed)
        start = best = self.error(*held)
        best_state, history, steps = None, [], 0
        count, size = len(train[0]), min(config.batch_size, len(train[0]))
        for _ in range(config.epochs):
            order = rng.permutation(count)
            for first in range(0, count - size + 1, size):
                rows = mx.array(order[first:first + size])
                loss = self.step(train[0][rows], train[1][rows])
                steps += 1
                if not math.isfinite(loss):
                    break
            error = self.error(*held)
            history.append(round(error, 8))
            if error < best:
                best, best_state = error, self.state()
            if not math.isfinite(loss):
                break
        if best_state is not None:
            self.block.update(tree_unflatten(best_state))
        return {"start_error": start, "final_error": best, "kept_start": best_state is None, "steps": steps,
                "held_out_history": history}


def train_block(block, mask, train: tuple, held: tuple, config: BlockwiseConfig, reference=None) -> dict:
    """Train ``block``'s quantized layers in place, their latent weights from ``reference`` (the float
    block) where they can; return its report (errors on the held-out windows)."""
    layers = quantized_linears(block, reference)
    if not layers:
        return {"layers": 0, "start_error": None, "final_error": None, "kept_start": True, "steps": 0}
    block.update_modules(tree_unflatten([(path, twin) for path, _, twin in layers]))
    narrow = widen_floats(block)  # norms and other float parameters; the twins are float32 already
    try:
        report = BlockTrainer(block, {p: t for p, _, t in layers}, mask, config).run(train, held)
        if not report["kept_start"]:
            for _, module, twin in layers:
                store_twin(module, twin)
    finally:
        restore_dtypes(block, narrow)
        block.update_modules(tree_unflatten([(path, module) for path, module, _ in layers]))
        mx.eval(block.parameters())
    return {"layers": len(layers), **report}


def reconstruct_blocks(model, teacher, tokens, config: BlockwiseConfig | None = None,
                       progress: bool = True) -> dict:
    """Train every decoder block of the quantized MLX ``model`` to reproduce ``teacher``'s, in place.

    model: an MLX model whose blocks hold quantized linear layers (affine, lut, ternary).
    teacher: the float MLX model with the same architecture. tokens: calibration windows
    [S, T] (S >= 2); the last ``max(1, round(S * held_out))`` are held out.
    Returns the report: per block the held-out error before and after (``blocks``), the
    model's held-out KL before and after (``start_kl``, ``final_kl``; ``kept_start`` when
    training did not lower it and the start was restored), the token counts, the
    settings and the seconds taken.
    """
    config = (config or BlockwiseConfig()).check()
    require_training("blockwise reconstruction", model, teacher)
    tokens = np.asarray(tokens, dtype=np.int32)
    if tokens.ndim != 2 or len(tokens) < 2 or tokens.shape[1] < 2:
        raise SLMError(f"blockwise reconstruction needs at least 2 calibration windows (one is held out), "
                       f"not an array of shape {tokens.shape}")
    held = max(1, round(len(tokens) * config.held_out))
    if held >= len(tokens):
        raise SLMError(f"held_out={config.held_out} leaves no training window out of {len(tokens)}")
    split = len(tokens) - held
    started = time.perf_counter()
    blocks, teacher_blocks = blocks_of(model), blocks_of(teacher)
    settings = {k: v for k, v in asdict(config).items() if k != "checkpoint"}
    checkpoints = BlockCheckpoints(config.checkpoint, config.checkpoint and fingerprint(tokens, settings, model))
    student_x = block_inputs(model, tokens, config.batch_size)
    start_state = tree_flatten(model.parameters())  # immutable arrays: keeping them costs no copy
    reports, resumed = [], 0
    with fast_cpu(teacher):
        start_kl = held_out_kl(model, teacher, tokens[split:])
        masks = block_masks(teacher, mx.array(tokens[:1]))
        float_x = block_inputs(teacher, tokens, config.batch_size)
        bar = tqdm(range(len(blocks)), desc=f"blockwise ({split} x {tokens.shape[1]} tokens, {config.epochs} epochs)",
                   disable=hidden(progress))
        for index in bar:
            target = run_block(teacher_blocks[index], float_x, masks[index], config.batch_size)
            report = checkpoints.load(index, blocks[index])
            if report is None:
                x = student_x if config.inputs == "quantized" else float_x
                report = train_block(blocks[index], masks[index], (x[:split], target[:split]),
                                     (x[split:], target[split:]), config, teacher_blocks[index])
                checkpoints.save(index, blocks[index], report)
            else:
                resumed += 1
            reports.append(report)
            if report["final_error"] is not None:
                bar.set_postfix(held_out_error=f"{report['start_error']:.4f}->{report['final_error']:.4f}")
            with fast_cpu(blocks[index]):
                student_x = run_block(blocks[index], student_x, masks[index], config.batch_size)
            float_x = target
        final_kl = held_out_kl(model, teacher, tokens[split:])
    kept_start = not final_kl < start_kl
    if kept_start:  # every block's error dropped, and still the whole model got worse: keep the start
        model.update(tree_unflatten(start_state))
        mx.eval(model.parameters())
    trained = [r for r in reports if r["final_error"] is not None]
    return {**asdict(config), "start_kl": start_kl, "final_kl": final_kl, "kept_start": kept_start,
            "blocks": reports, "train_windows": split, "held_out_windows": held,
            "seq_len": int(tokens.shape[1]), "train_tokens": int(split * tokens.shape[1] * config.epochs),
            "improved_blocks": sum(not r["kept_start"] for r in trained), "trained_blocks": len(trained),
            "resumed_blocks": resumed,
            "seconds": time.perf_counter() - started}
