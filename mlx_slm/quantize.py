"""Whole-model quantization into the affine format (round-to-nearest for now).

``rtn`` gives, weight for weight, what ``mlx_lm.convert -q`` gives with the same
bits and group size: on MLX it is ``nn.quantize``; on numpy it is the bit-exact
twin in :mod:`mlx_slm.formats.affine`.
"""

from __future__ import annotations

import logging

from tqdm import tqdm

from .backend import backend_of
from .errors import SLMError
from .formats import get_format
from .loading import model_config, set_model_config
from .qconfig import check_config, read_config_file, resolve_layer

log = logging.getLogger("mlx_slm")
METHODS = ("rtn",)


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


def apply_numpy(model, plan: dict, weight_format, progress: bool) -> None:
    todo = [(p, s) for p, s in plan.items() if s is not None]
    for path, settings in tqdm(todo, desc="quantizing", disable=not progress):
        stored = weight_format.pack(model.weights[f"{path}.weight"], **settings)
        model.weights.update({f"{path}.{suffix}": a for suffix, a in zip(weight_format.stored, stored)})
    model.drop_cache()


def apply_mlx(model, plan: dict) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    def predicate(path, module):
        settings = plan.get(path)
        return False if settings is None else {**settings, "mode": "affine"}

    nn.quantize(model, class_predicate=predicate)
    mx.eval(model.parameters())


def quantize(model, bits: int = 4, group_size: int = 64, method: str = "rtn", config=None,
             format: str = "affine", progress: bool = True):
    """Quantize ``model`` in place and return it.

    bits / group_size: global affine settings (bits 2-8 but 7, groups 32/64/128).
    config: per-layer overrides (dict or YAML/JSON path; see :mod:`mlx_slm.qconfig`).
    format: a registered weight format (see :mod:`mlx_slm.formats`).
    Layers whose input width does not divide by their group size stay in float and
    are logged.
    """
    if method not in METHODS:
        raise SLMError(f"quantization method {method!r} is not available; available: {', '.join(METHODS)}")
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
    for path, reason in skipped.items():
        log.warning("not quantizing %s: %s", path, reason)
    if backend_of(model) == "numpy":
        apply_numpy(model, plan, weight_format, progress)
    else:
        apply_mlx(model, plan)
    model_settings["quantization"] = quantization_record(plan, bits, group_size, user_config, format)
    model_settings["mlx_slm"] = {"method": method, "unquantized": skipped}
    set_model_config(model, model_settings)
    return model
