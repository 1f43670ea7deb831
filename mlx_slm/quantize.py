"""Whole-model quantization into the affine format: the dispatcher.

``rtn`` gives, weight for weight, what ``mlx_lm.convert -q`` gives with the same
bits and group size: on MLX it is ``nn.quantize``; on numpy it is the bit-exact
twin in :mod:`mlx_slm.formats.affine`. The calibrated methods ``imatrix`` and
``gptq`` (:mod:`mlx_slm.quant`) choose other values in the same format from
statistics of calibration text run through the numpy engine.
"""

from __future__ import annotations

import logging

from tqdm import tqdm

from .backend import backend_of
from .errors import SLMError
from .formats import get_format
from .loading import model_config, set_model_config
from .qconfig import check_config, read_config_file, resolve_layer
from .quant.calibration import DEFAULT_NUM_SAMPLES, DEFAULT_SEQ_LEN, calibration_windows

log = logging.getLogger("mlx_slm")
METHODS = ("rtn", "imatrix", "gptq")
CALIBRATED = ("imatrix", "gptq")
AFFINE_STORED = get_format("affine").stored  # ("weight", "scales", "biases")
GPTQ_DEFAULTS = {"damp": 0.01, "block_size": 128, "act_order": True, "grid": "imatrix"}


def candidate_layers(model) -> dict[str, tuple]:
    """Unquantized layers that could be quantized: path -> weight shape."""
    if backend_of(model) == "numpy":
        return {
            name[: -len(".weight")]: value.shape
            for name, value in model.weights.items()
            if name.endswith(".weight") and value.ndim == 2 and value.dtype.kind == "f"
        }
    return {
        path: module.weight.shape
        for path, module in model.named_modules()
        if hasattr(module, "to_quantized") and "weight" in module and module.weight.ndim == 2
    }


def quantization_plan(layers: dict, bits: int, group_size: int, config: dict, weight_format=None):
    """Decide each layer's settings. Returns ``(plan {path: settings|None}, skipped {path: reason})``."""
    weight_format = weight_format or get_format("affine")
    plan, skipped = {}, {}
    for path, shape in sorted(layers.items()):
        settings = resolve_layer(path, config, bits, group_size)
        if settings is None:
            plan[path], skipped[path] = None, "kept in float by the config"
            continue
        try:
            weight_format.check((settings["group_size"],), settings["bits"], settings["group_size"])
        except SLMError as err:
            raise SLMError(f"layer {path}: {err}") from None
        if shape[-1] % settings["group_size"]:
            plan[path] = None
            skipped[path] = f"width {shape[-1]} is not divisible by the group size {settings['group_size']}"
            continue
        plan[path] = settings
    return plan, skipped


def quantization_record(plan: dict, bits: int, group_size: int, user_config: dict, mode: str) -> dict:
    """The ``quantization`` entry of config.json (mlx-lm's format)."""
    base = {"bits": user_config.get("bits", bits), "group_size": user_config.get("group_size", group_size)}
    record = {"group_size": base["group_size"], "bits": base["bits"], "mode": mode}
    for path, settings in plan.items():
        if settings is None and user_config:
            record[path] = False
        elif settings is not None and settings != base:
            record[path] = {**settings, "mode": mode}
    return record


def store_numpy(model, chosen: dict, suffixes: tuple) -> None:
    """Replace numpy layers' weights with ``chosen`` (path -> stored arrays, in ``suffixes`` order)."""
    for path, stored in chosen.items():
        model.weights.update({f"{path}.{suffix}": a for suffix, a in zip(suffixes, stored)})
    model.drop_cache()


def apply_numpy(model, plan: dict, weight_format, progress: bool) -> None:
    todo = [(p, s) for p, s in plan.items() if s is not None]
    chosen = {path: weight_format.pack(model.weights[f"{path}.weight"], **settings)
              for path, settings in tqdm(todo, desc="quantizing", disable=not progress)}
    store_numpy(model, chosen, weight_format.stored)


def apply_mlx(model, plan: dict, chosen: dict | None = None) -> None:
    """nn.quantize with ``plan``; then, if given, overwrite layers with ``chosen`` (path -> stored arrays)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    from .loading import mlx_array

    def predicate(path, module):
        settings = plan.get(path)
        return False if settings is None else {**settings, "mode": "affine"}

    nn.quantize(model, class_predicate=predicate)
    if chosen:
        model.update(tree_unflatten([(f"{path}.{suffix}", mlx_array(array)) for path, stored in chosen.items()
                                     for suffix, array in zip(AFFINE_STORED, stored)]))
    mx.eval(model.parameters())


def weight_dtypes(model, paths) -> dict:
    """Layer path -> numpy dtype of its float weight (what its scales and biases are stored in)."""
    if backend_of(model) == "numpy":
        return {path: model.weights[f"{path}.weight"].dtype for path in paths}
    from mlx.utils import tree_flatten

    from .formats.dtypes import FLOAT_DTYPES

    params = dict(tree_flatten(model.parameters()))
    return {path: FLOAT_DTYPES[str(params[f"{path}.weight"].dtype).split(".")[-1]] for path in paths}


def quantize_calibrated(model, plan: dict, method: str, tokens, options: dict, progress: bool) -> None:
    """Choose values with :func:`mlx_slm.quant.sequential.sequential_quantize` and store them in ``model``."""
    from .quant.sequential import sequential_quantize

    todo = [path for path, settings in plan.items() if settings is not None]
    dtypes = weight_dtypes(model, todo)
    if backend_of(model) == "numpy":
        store_numpy(model, sequential_quantize(model, plan, tokens, method, dtypes, options, progress=progress),
                    AFFINE_STORED)
        return
    from .runtime import numpy_twin

    chosen = sequential_quantize(numpy_twin(model), plan, tokens, method, dtypes, options, progress=progress)
    apply_mlx(model, plan, chosen)


def quantize(model, bits: int = 4, group_size: int = 64, method: str = "rtn", config=None,
             format: str = "affine", progress: bool = True, calib=None, tokenizer=None,
             num_samples: int = DEFAULT_NUM_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN, gptq_options: dict | None = None):
    """Quantize ``model`` in place and return it.

    bits / group_size: global affine settings (bits 2-8 but 7, groups 32/64/128).
    method: "rtn" (as mlx_lm.convert), "imatrix" (importance-weighted scales and
    biases) or "gptq" (error-compensating rounding); the last two need ``calib``.
    config: per-layer overrides (dict or YAML/JSON path; see :mod:`mlx_slm.qconfig`).
    format: a registered weight format (see :mod:`mlx_slm.formats`).
    calib: calibration text (.txt/.jsonl path or list of strings), cut with
    ``tokenizer`` into ``num_samples`` windows of ``seq_len`` tokens.
    gptq_options: damp (0.01), block_size (128), act_order (True), grid ("imatrix" or "rtn").
    Layers whose input width does not divide by their group size stay in float and
    are logged.
    """
    if method not in METHODS:
        raise SLMError(f"quantization method {method!r} is not available; available: {', '.join(METHODS)}")
    if method in CALIBRATED and format != "affine":
        raise SLMError(f"method {method!r} supports the affine format only")
    user_config = check_config(read_config_file(config) if isinstance(config, (str, bytes)) or
                               hasattr(config, "__fspath__") else (config or {}))
    weight_format = get_format(format)
    weight_format.check((group_size,), bits, group_size)
    model_settings = model_config(model)
    if model_settings.get("quantization"):
        raise SLMError("the model is already quantized; start from a float model")
    layers = candidate_layers(model)
    if not layers:
        raise SLMError("the model has no layers that can be quantized")
    plan, skipped = quantization_plan(layers, bits, group_size, user_config, weight_format)
    record = {"method": method, "unquantized": skipped}
    if method in CALIBRATED:
        tokens, record["calibration"] = calibration_windows(tokenizer, calib, num_samples, seq_len)
        unknown = set(gptq_options or {}) - set(GPTQ_DEFAULTS)
        if unknown:
            raise SLMError(f"unknown gptq_options {sorted(unknown)}; known: {sorted(GPTQ_DEFAULTS)}")
        if method == "gptq":
            record["gptq"] = {**GPTQ_DEFAULTS, **(gptq_options or {})}
            if record["gptq"]["grid"] not in ("imatrix", "rtn"):
                raise SLMError(f"gptq_options grid must be 'imatrix' or 'rtn', not {record['gptq']['grid']!r}")
    for path, reason in skipped.items():
        log.warning("not quantizing %s: %s", path, reason)
    if method in CALIBRATED:
        quantize_calibrated(model, plan, method, tokens, record.get("gptq"), progress)
    elif backend_of(model) == "numpy":
        apply_numpy(model, plan, weight_format, progress)
    else:
        apply_mlx(model, plan)
    model_settings["quantization"] = quantization_record(plan, bits, group_size, user_config, format)
    model_settings["mlx_slm"] = record
    set_model_config(model, model_settings)
    return model
