"""Unstructured and N:M pruning of every decoder linear layer: magnitude, Wanda, SparseGPT.

The architecture stays the same; pruned weights become exact zeros. Wanda and
SparseGPT calibrate one decoder block at a time on the calibration engine: block i
sees the hidden states that the already-pruned blocks < i produce (as
:mod:`mlx_slm.quant.sequential` does for GPTQ), and every layer of a block is
pruned from statistics of that block's input.
"""

from __future__ import annotations

import fnmatch
import re

import numpy as np

from ..calib.blocks import calibrate_blocks
from ..data.windows import DEFAULT_NUM_SAMPLES, DEFAULT_SEQ_LEN, calibration_windows
from ..errors import SLMError
from ..formats.dtypes import as_float32, round_to
from ..io.safetensors_np import check_spill_room
from ..model_access import access
from .common import add_record, check_float_model
from .masks import check_pattern_fits, check_sparsity, magnitude_mask, parse_pattern
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_mask

METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED = ("wanda", "sparsegpt")
SPARSEGPT_DEFAULTS = {"block_size": 128, "damp": 0.01}
DECODER_LINEAR = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.[A-Za-z0-9_]+$")


def decoder_linears(layers: dict) -> dict:
    """The decoder-block projections among ``layers`` (path -> weight shape, the model view's
    candidate layers: read from the model, no weight converted): embeddings and the head excluded."""
    return {path: shape for path, shape in layers.items() if DECODER_LINEAR.match(path)}


def parse_target(value, where: str):
    """A layer's target: None (skip), a sparsity, or an "N:M" pattern -> None | ("s", s) | ("nm", (n, m))."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and ":" in value or isinstance(value, (tuple, list)):
        return ("nm", parse_pattern(value))
    try:
        return ("s", check_sparsity(value))
    except SLMError as err:
        raise SLMError(f"{where}: {err}") from None


def pruning_plan(layers: dict, sparsity, pattern, overrides: dict | None) -> dict:
    """Layer path -> target (see :func:`parse_target`); overrides (glob -> target) apply in order, the last
    match wins."""
    default = ("nm", parse_pattern(pattern)) if pattern is not None else ("s", check_sparsity(sparsity))
    rules = [(glob, parse_target(value, f"layer override {glob!r}")) for glob, value in (overrides or {}).items()]
    plan = {}
    for path, shape in sorted(layers.items(), key=lambda item: natural_key(item[0])):
        target = default
        for glob, value in rules:
            if fnmatch.fnmatchcase(path, glob):
                target = value
        if target is not None and target[0] == "nm":
            check_pattern_fits(path, shape[-1], target[1][1])
        plan[path] = target
    return plan


def natural_key(path: str):
    return [int(part) if part.isdigit() else part for part in path.split(".")]


def target_args(target) -> dict:
    return {"pattern": target[1]} if target[0] == "nm" else {"sparsity": target[1]}


def prune_layer(method: str, w: np.ndarray, target, stats, name: str, options: dict) -> np.ndarray:
    """New float32 weights [N, K] for one layer."""
    if method == "magnitude":
        return w * magnitude_mask(w, **target_args(target))
    arrays = stats.arrays.for_methods()
    if method == "wanda":
        return w * wanda_mask(w, stats.importance(name), arrays=arrays, **target_args(target))
    _, factor = stats.factor(name, options["damp"], act_order=False)
    pruned, _ = sparsegpt_prune(w, stats.hessian(name), block_size=options["block_size"], factor=factor,
                                arrays=arrays, **target_args(target))
    return pruned


def prune_weights(engine, plan: dict, method: str, store, tokens=None, options: dict | None = None,
                  dtypes: dict | None = None, batch_size: int = 4, progress: bool = True) -> None:
    """Prune every planned layer of the calibration ``engine`` (the numpy engine, or
    :class:`~mlx_slm.calib.mlx_engine.MLXEngine`) and hand the new weights to ``store`` (path -> numpy
    array in its stored dtype), one decoder block at a time as soon as nothing computes with it again,
    so only one block's new weights are held.

    plan: path -> target (None = keep dense); tokens [S, T]: calibration windows (Wanda / SparseGPT).
    dtypes: path -> dtype to store (default: the engine's). The engine's stored weights are
    left as they were; it computes with the pruned ones (``set_dense``) afterwards.
    """
    options = {**SPARSEGPT_DEFAULTS, **(options or {})}
    todo = {path: target for path, target in plan.items() if target is not None}
    dtypes = dtypes or {}
    results = {}

    def prune_layers(names, stats):
        for name in names:
            stored = engine.weights[f"{name}.weight"]
            new = prune_layer(method, as_float32(stored), todo[name], stats, name, options)
            results[name] = round_to(new, dtypes.get(name, stored.dtype))
            engine.set_dense(name, as_float32(results[name]))

    def done(names):
        store({name: results.pop(name) for name in names})

    if method == "magnitude":
        for name in sorted(todo, key=natural_key):
            prune_layers([name], None)
            engine.drop_cache([name])  # nothing computes with it here
            done([name])
        return
    calibrate_blocks(engine, todo, tokens, method == "sparsegpt", prune_layers, f"{method} blocks", batch_size,
                     progress, order=lambda paths: sorted(paths, key=natural_key), done=done)


def prune(model, method: str = "wanda", sparsity: float = 0.5, pattern=None, calib=None, tokenizer=None,
          num_samples: int = DEFAULT_NUM_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN, layers: dict | None = None,
          sparsegpt_options: dict | None = None, cpu_engine: str | None = None, progress: bool = True):
    """Set weights of every decoder linear layer (q/k/v/o, gate/up/down) to zero, in place; return ``model``.

    method: "magnitude" (smallest |W| in the layer), "wanda" (smallest |W_ij|*||x_j|| in each
    output row) or "sparsegpt" (OBS mask selection and weight update; changes the kept weights too).
    sparsity: fraction of zeros per layer in [0, 1) (exact: round(s * weights)).
    pattern: "N:M" (e.g. "2:4", "4:8"): N zeros in every M consecutive input weights of a row;
    replaces ``sparsity``.
    calib / tokenizer / num_samples / seq_len: calibration text for wanda and sparsegpt (as for
    :func:`mlx_slm.quantize`); magnitude needs none.
    layers: per-layer overrides, glob over layer paths -> sparsity, "N:M" or None (keep dense),
    applied in order (the last match wins), e.g. ``{"*.down_proj": 0.3, "model.layers.0.*": None}``.
    sparsegpt_options: block_size (128), damp (0.01).
    cpu_engine: on a CPU, which engine an MLX model's calibration pass runs on, "numpy" or "mlx"
    (default: :func:`~mlx_slm.model_access.choose_engine`'s choice); recorded as ``calibration_engine``.
    Embeddings, norms and the output head are never pruned. The model must not be quantized.
    Records the pass in ``model_config(model)["mlx_slm"]["pruning"]``.
    """
    if method not in METHODS:
        raise SLMError(f"pruning method {method!r} is not available; available: {', '.join(METHODS)}")
    check_float_model(model, "prune")
    unknown = set(sparsegpt_options or {}) - set(SPARSEGPT_DEFAULTS)
    if unknown:
        raise SLMError(f"unknown sparsegpt_options {sorted(unknown)}; known: {sorted(SPARSEGPT_DEFAULTS)}")
    view = access(model)
    engine = view.calibration_engine(cpu_engine)
    candidates = decoder_linears(view.candidate_layers())
    if not candidates:
        raise SLMError("the model has no decoder linear layers to prune")
    plan = pruning_plan(candidates, sparsity, pattern, layers)
    record = {"kind": "unstructured", "method": method,
              "sparsity": None if pattern is not None else check_sparsity(sparsity),
              "pattern": None if pattern is None else "{}:{}".format(*parse_pattern(pattern))}
    if layers:
        record["layers"] = {glob: (None if value is False else value) for glob, value in layers.items()}
    tokens = None
    if method in CALIBRATED:
        if calib is None:
            raise SLMError(f"{method} needs calibration text: pass calib=<.txt/.jsonl path or list of strings> "
                           "(--calib FILE), or use method='magnitude'")
        tokens, record["calibration"] = calibration_windows(tokenizer, calib, num_samples, seq_len)
        record["calibration_engine"] = engine.backend
    if method == "sparsegpt":
        record["sparsegpt"] = {**SPARSEGPT_DEFAULTS, **(sparsegpt_options or {})}
    dtypes = view.dtypes()
    check_spill_room(sum(int(np.prod(candidates[path])) * np.dtype(dtypes[f"{path}.weight"]).itemsize
                         for path, target in plan.items() if target is not None))
    counts = {"layers": 0, "zeros": 0}

    def store(new: dict) -> None:
        view.write({f"{path}.weight": value for path, value in new.items()}, spill=True)  # held on disk
        view.release(new)
        counts["layers"] += len(new)
        counts["zeros"] += sum(int(np.count_nonzero(value == 0)) for value in new.values())

    prune_weights(engine, plan, method, store, tokens, sparsegpt_options,
                  {path: dtypes[f"{path}.weight"] for path in plan}, progress=progress)
    total = sum(int(np.prod(candidates[path])) for path, target in plan.items() if target is not None)
    record.update({"pruned_layers": counts["layers"], "weights": total, "zeros": counts["zeros"],
                   "achieved_sparsity": round(counts["zeros"] / total, 6) if total else 0.0})
    add_record(model, record)
    return model
