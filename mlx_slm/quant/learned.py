"""Learned quantization: train the scales and biases of affine layers by distillation.

Starting from a model whose layers are already affine-quantized (rtn, imatrix,
gptq, ...), only the per-group scales and biases of every ``QuantizedLinear`` and
``QuantizedEmbedding`` (whose scales also serve a tied output head) are trained, to
minimise KL(teacher || student) on calibration windows. The packed codes and every
other parameter stay bit-identical.

How it runs on a CPU:

- the teacher's top-k logits of every window are computed ONCE (on the engine
  :func:`mlx_slm.distill.teacher.teacher_logits` picks), so a step costs one student
  forward and backward only;
- while training, each affine layer is swapped for a twin computing
  ``x @ dequantize(codes, s, b).T`` in float32. MLX gives gradients with respect to
  the scales and biases through ``quantized_matmul`` too, but on a CPU that kernel
  is scalar code, an order of magnitude slower than the dequantize + OpenBLAS GEMM twin;
- the twin trains ``s / u`` and ``b / u`` with ``u`` a power of two near the layer's
  mean |s|, so Adam's step size is relative to the layer's scales (lr 3e-5: each
  step moves a typical scale by about 0.003 % and a bias by about 3e-5 of the layer's
  typical scale) and multiplying back by ``u`` is exact. The default rate suits a
  good start such as gptq's, which larger rates (1e-4, 1e-3) move away from within a
  few steps; a poor start (rtn) gains from larger rates.

Every evaluation scores the held-out windows with the parameters rounded to their
stored dtype; the best rounded state is kept only if it beats the starting state,
otherwise the model is left exactly as it came.
"""

from __future__ import annotations

import math
import time

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn
from mlx.utils import tree_flatten, tree_unflatten
from tqdm import tqdm

from ..distill.losses import divergence, log_softmax
from ..distill.teacher import teacher_logits, top_k_logits
from ..errors import SLMError
from ..model_access import require_training
from ..progress import hidden
from ..runtime import quantized_modules, widen_floats
from .methods.learned import LearnedConfig


def affine_layers(model) -> list[tuple[str, nn.Module]]:
    """(path, module) of every affine QuantizedLinear / QuantizedEmbedding."""
    return [(path, module) for path, module in quantized_modules(model)
            if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))]


def power_of_two_unit(scales: mx.array) -> float:
    """The power of two nearest the mean |scale| (1.0 for all-zero scales)."""
    mean = mx.abs(scales.astype(mx.float32)).mean().item()
    return 2.0 ** round(math.log2(mean)) if mean > 0 else 1.0


class LearnedAffine(nn.Module):
    """Float32 training twin of an affine layer: weight = u * dequantize(codes, s / u, b / u)."""

    def __init__(self, layer):
        super().__init__()
        self.unit = power_of_two_unit(layer.scales)
        self.group_size, self.bits = layer.group_size, layer.bits
        self.weight = layer.weight
        self.scales = layer.scales.astype(mx.float32) / self.unit
        self.biases = layer.biases.astype(mx.float32) / self.unit
        if "bias" in layer:
            self.bias = layer.bias

    def dense(self) -> mx.array:
        """The dequantized weight / u, float32 [N, K]."""
        return mx.dequantize(self.weight, self.scales, self.biases, group_size=self.group_size, bits=self.bits)

    def as_linear(self, x: mx.array) -> mx.array:
        """x [..., K] -> x @ weight.T [..., N]."""
        out = (x @ self.dense().T) * self.unit
        return out + self.bias if "bias" in self else out


class LearnedLinear(LearnedAffine):
    def __call__(self, x):
        return self.as_linear(x)


class LearnedEmbedding(LearnedAffine):
    def __call__(self, ids):
        """ids [...] -> rows [..., K] (only the rows read are dequantized)."""
        rows = mx.dequantize(self.weight[ids], self.scales[ids], self.biases[ids], group_size=self.group_size,
                             bits=self.bits)
        return rows * self.unit


def learned_twin(layer) -> LearnedAffine:
    return LearnedEmbedding(layer) if isinstance(layer, nn.QuantizedEmbedding) else LearnedLinear(layer)


class TrainingTwins:
    """Within ``with``: affine layers swapped for float32 twins, other floats widened; all undone on exit.

    ``twins``: path -> twin; ``start()``: flat {path.scales / path.biases: float32 / u} of the start;
    ``rounded(params)``: those values rounded to the stored dtype (exact: u is a power of two).
    """

    def __init__(self, model, layers: list):
        self.model, self.layers = model, layers
        self.stored = {f"{path}.{name}": layer[name].dtype for path, layer in layers for name in ("scales", "biases")}

    def __enter__(self):
        self.saved = tree_flatten(self.model.parameters())
        self.twins = {path: learned_twin(layer) for path, layer in self.layers}
        self.model.update_modules(tree_unflatten(list(self.twins.items())))
        widen_floats(self.model)
        return self

    def __exit__(self, *exc):
        self.model.update_modules(tree_unflatten(self.layers))
        self.model.update(tree_unflatten(self.saved))

    def start(self) -> dict:
        return {f"{path}.{name}": twin[name] for path, twin in self.twins.items() for name in ("scales", "biases")}

    def unit(self, name: str) -> float:
        return self.twins[name.rsplit(".", 1)[0]].unit

    def rounded(self, params: dict) -> dict:
        return {name: (value * self.unit(name)).astype(self.stored[name]).astype(mx.float32) / self.unit(name)
                for name, value in params.items()}

    def use(self, params: dict) -> None:
        self.model.update(tree_unflatten(list(params.items())))

    def store(self, params: dict) -> None:
        """Write (rounded) ``params`` into the original layers, in their stored dtype."""
        modules = dict(self.layers)
        for name, value in params.items():
            path, field = name.rsplit(".", 1)
            setattr(modules[path], field, (value * self.unit(name)).astype(self.stored[name]))


def teacher_top_k(teacher, tokens: np.ndarray, top_k: int, batch_size: int, progress: bool):
    """(values [S, T, k] float32, indices [S, T, k] int32, V): the teacher's k largest logits of
    each position, in decreasing order, and its vocabulary size."""
    values, indices = [], []
    with teacher_logits(teacher) as logits_of:
        for first in tqdm(range(0, len(tokens), batch_size), desc="teacher top-k", disable=hidden(progress)):
            logits = logits_of(tokens[first:first + batch_size])
            top_values, top_indices = top_k_logits(logits, top_k)
            values.append(top_values)
            indices.append(top_indices)
    return np.concatenate(values), np.concatenate(indices), logits.shape[-1]


def top_k_kl(student_logits: mx.array, values: mx.array, indices: mx.array) -> mx.array:
    """Mean KL(teacher || student) per position on the teacher's top-k tokens, both renormalized there.
    student_logits [B, T, V]; values, indices [B, T, k]."""
    student = mx.take_along_axis(student_logits.astype(mx.float32), indices, axis=-1)
    return divergence(log_softmax(values), log_softmax(student)).mean()


def check_request(model, tokens: np.ndarray, options: dict) -> tuple[list, dict]:
    """(the affine layers to train, the settings); SLMError for a request that cannot run."""
    require_training("learned", model)
    settings = LearnedConfig.from_options(options).training()
    layers = affine_layers(model)
    if not layers:
        raise SLMError("learned quantization trains the scales and biases of affine-quantized layers, and this "
                       "model has none: quantize it first (method rtn, imatrix or gptq, format affine)")
    if tokens.ndim != 2 or tokens.shape[1] < 2 or len(tokens) < 2:
        raise SLMError(f"learned quantization needs at least 2 calibration windows of at least 2 tokens "
                       f"(one is held out), not an array of shape {tokens.shape}")
    return layers, settings


class ScaleLearner:
    """One run over train / held-out windows with precomputed teacher top-k logits."""

    def __init__(self, twins: TrainingTwins, train: tuple, held: tuple, settings: dict):
        self.twins, self.train, self.held, self.settings = twins, train, held, settings
        self.loss_and_grad = mx.value_and_grad(self.loss)
        self.optimizer = optim.Adam(learning_rate=settings["learning_rate"])

    def loss(self, params: dict, tokens: mx.array, values: mx.array, indices: mx.array) -> mx.array:
        self.twins.use(params)
        return top_k_kl(self.twins.model(tokens), values, indices)

    def held_out_kl(self, params: dict) -> float:
        """Mean per-position KL on the held-out windows with ``params``."""
        self.twins.use(params)
        tokens, values, indices = self.held
        size, total = self.settings["batch_size"], 0.0
        for first in range(0, len(tokens), size):
            rows = slice(first, first + size)
            kl = top_k_kl(self.twins.model(mx.array(tokens[rows])), mx.array(values[rows]), mx.array(indices[rows]))
            total += kl.item() * len(tokens[rows])
        return total / len(tokens)

    def batches(self):
        """Endless row-index batches [B] over the train windows, reshuffled every epoch."""
        rng = np.random.default_rng(self.settings["seed"])
        count, size = len(self.train[0]), min(self.settings["batch_size"], len(self.train[0]))
        while True:
            order = rng.permutation(count)
            for first in range(0, count - size + 1, size):
                yield order[first:first + size]

    def step(self, params: dict, rows: np.ndarray) -> tuple[dict, float]:
        tokens, values, indices = (mx.array(a[rows]) for a in self.train)
        loss, grads = self.loss_and_grad(params, tokens, values, indices)
        params = self.optimizer.apply_gradients(grads, params)
        mx.eval(params, self.optimizer.state, loss)
        return params, loss.item()

    def run(self, progress: bool) -> dict:
        """Train; return the report with the best rounded params under ``"best"`` (None: keep the start)."""
        settings = self.settings
        params = self.twins.start()
        start_kl = best_kl = self.held_out_kl(params)
        best, best_step, stale, steps, stopped, train_seconds = None, 0, 0, 0, False, 0.0
        history = []  # (step, held-out KL) of every evaluation
        bar = tqdm(zip(range(settings["steps"]), self.batches()), total=settings["steps"], desc="learning scales",
                   disable=hidden(progress))
        for step, rows in bar:
            tick = time.perf_counter()
            params, loss = self.step(params, rows)
            train_seconds += time.perf_counter() - tick
            steps = step + 1
            last = steps == settings["steps"] or not math.isfinite(loss)
            if steps % settings["eval_every"] and not last:
                continue
            candidate = self.twins.rounded(params)
            kl = self.held_out_kl(candidate)
            history.append((steps, round(kl, 6)))
            bar.set_postfix(loss=f"{loss:.4f}", held_out_kl=f"{kl:.4f}")
            if kl < best_kl:
                best, best_kl, best_step, stale = candidate, kl, steps, 0
            else:
                stale += 1
            if not math.isfinite(loss) or stale >= settings["patience"]:
                stopped = steps < settings["steps"]
                break
        bar.close()
        return {"start_kl": start_kl, "final_kl": best_kl, "kept_start": best is None, "best_step": best_step,
                "steps_run": steps, "stopped_early": stopped, "seconds_per_step": train_seconds / max(steps, 1),
                "held_out_history": history, "best": best}


def learn_quantization(model, teacher, tokens, progress: bool = True, **options) -> dict:
    """Train the scales and biases of ``model``'s affine layers towards ``teacher``, in place.

    model: an MLX model with affine QuantizedLinear / QuantizedEmbedding layers.
    teacher: the float model (MLX or numpy backend, same vocabulary); its top-k logits
    are computed once. tokens: calibration windows [S, T] int (S >= 2); the last
    ``max(1, round(S * held_out))`` are held out.
    options (:class:`~mlx_slm.quant.methods.learned.LearnedConfig`'s fields but start):
    steps, batch_size (windows per step), learning_rate
    (Adam, relative to each layer's scales), top_k (teacher logits kept; >= the
    vocabulary gives the exact KL), eval_every (steps between held-out evaluations),
    patience (evaluations without improvement before stopping), held_out (fraction),
    seed (batch order).
    Returns the report: start_kl / final_kl (mean held-out KL per position, in float32,
    scales rounded to their stored dtype), kept_start (training did not help: the model
    is unchanged), best_step, steps_run, stopped_early, seconds_per_step, held_out_history
    ([step, KL] of every evaluation), seconds, and the settings used.
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    layers, settings = check_request(model, tokens, options)
    held = max(1, round(len(tokens) * settings["held_out"]))
    if held >= len(tokens):
        raise SLMError(f"held_out={settings['held_out']} leaves no training window out of {len(tokens)}")
    started = time.perf_counter()
    values, indices, teacher_vocabulary = teacher_top_k(teacher, tokens, settings["top_k"],
                                                        settings["batch_size"], progress)
    split = len(tokens) - held
    with TrainingTwins(model, layers) as twins:
        vocabulary = twins.model(mx.array(tokens[:1, :2])).shape[-1]
        if vocabulary != teacher_vocabulary:
            raise SLMError(f"the teacher's and student's vocabularies differ in size ({teacher_vocabulary} and "
                           f"{vocabulary}); they must share a tokenizer")
        learner = ScaleLearner(twins, (tokens[:split], values[:split], indices[:split]),
                               (tokens[split:], values[split:], indices[split:]), settings)
        report = learner.run(progress)
        best = report.pop("best")
    if best is not None:
        twins.store(best)
        mx.eval(model.parameters())
    report["seconds"] = time.perf_counter() - started
    return {**report, "layers": len(layers), "train_windows": split, "held_out_windows": held,
            "seq_len": int(tokens.shape[1]), **settings}
