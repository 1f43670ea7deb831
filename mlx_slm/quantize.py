"""Whole-model quantization: the dispatcher.

Affine ``rtn`` gives, weight for weight, what ``mlx_lm.convert -q`` gives with the
same bits and group size: on MLX it is ``nn.quantize``; on numpy it is the
bit-exact twin in :mod:`mlx_slm.formats.affine`. The calibrated methods
``imatrix``, ``gptq`` and ``awq`` (:mod:`mlx_slm.quant`) choose other values in the
same format from statistics of calibration text run through the numpy engine, one
decoder block at a time (``awq`` also rescales norm weights and a few float
parameters, leaving the float model's function unchanged).

The ``lut`` and ``ternary`` formats (and any per-layer mix of formats) are packed
by their numpy twins on either backend; on MLX the packed layers become
:mod:`mlx_slm.layers` modules. Their ``imatrix`` method takes each layer's input
importance (mean squared activation per column) from ONE pass of the float model
over the calibration windows on the numpy engine.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from .backend import backend_of, numpy_engine
from .errors import MLXRequiredError, SLMError
from .formats import affine, get_format
from .formats.dtypes import FLOAT_DTYPES
from .loading import model_config, set_model_config
from .qconfig import check_config, read_config_file, resolve_layer
from .quant import awq
from .quant.calibration import DEFAULT_NUM_SAMPLES, DEFAULT_SEQ_LEN, calibration_windows
from .quant.imatrix import weighted_quantize
from .quant.statistics import InputStatistics

log = logging.getLogger("mlx_slm")
METHODS = ("rtn", "imatrix", "gptq", "awq", "blockwise", "learned")
CALIBRATED = ("imatrix", "gptq", "awq")
AFFINE_ONLY = ("gptq", "awq")
GPTQ_DEFAULTS = {"damp": 0.01, "block_size": 32, "act_order": True, "grid": "imatrix", "refit": True}
STATISTICS_BATCH = 4  # calibration windows per forward pass
LEARNED_STARTS = ("rtn", "imatrix", "gptq", "awq", "blockwise")
SENSITIVITY_WINDOWS = (8, 128)  # calibration windows x tokens the target_bpw planner measures on


def check_settings(method: str, format: str, bits: int | None, group_size: int | None) -> None:
    """SLMError for a method / format / bits / group size request that no layer could take
    (checked before any model is loaded)."""
    if method not in METHODS:
        raise SLMError(f"quantization method {method!r} is not available; available: {', '.join(METHODS)}")
    weight_format = get_format(format)
    weight_format.check(weight_format.default_bits if bits is None else bits,
                        weight_format.default_group_size if group_size is None else group_size)
    if method in AFFINE_ONLY and format != "affine":
        raise SLMError(f"method {method!r} supports the affine format only, not {format!r} "
                       "(use method 'imatrix' or 'rtn')")


def candidate_layers(model) -> dict[str, tuple]:
    """Unquantized layers that could be quantized: path -> weight shape."""
    if backend_of(model) == "numpy":
        return {
            name[: -len(".weight")]: value.shape
            for name, value in model.weights.items()
            if name.endswith(".weight") and value.ndim == 2 and value.dtype in FLOAT_DTYPES.values()
        }
    return {
        path: module.weight.shape
        for path, module in model.named_modules()
        if hasattr(module, "to_quantized") and "weight" in module and module.weight.ndim == 2
    }


def layer_format(settings: dict, default: str) -> str:
    """The format a planned layer uses: its own ``format`` setting, else the call's."""
    return settings.get("format", default)


def quantization_plan(layers: dict, bits: int, group_size: int, config: dict, weight_format=None):
    """Decide each layer's settings. Returns ``(plan {path: settings|None}, skipped {path: reason})``.

    settings: ``{"bits", "group_size"}``, plus ``"format"`` where the config picks another
    format than ``weight_format`` (default affine). Layers whose shape does not fit
    their format (``WeightFormat.misfit``) are skipped with the reason.
    """
    default = (weight_format or get_format("affine")).name
    plan, skipped = {}, {}
    for path, shape in sorted(layers.items()):
        settings = resolve_layer(path, config, bits, group_size)
        if settings is None:
            plan[path], skipped[path] = None, "kept in float by the config"
            continue
        if settings.get("format") == default:
            del settings["format"]
        try:
            layer_weight_format = get_format(layer_format(settings, default))
            layer_weight_format.check(settings["bits"], settings["group_size"])
        except SLMError as err:
            raise SLMError(f"layer {path}: {err}") from None
        reason = layer_weight_format.misfit(shape, settings["bits"], settings["group_size"])
        if reason:
            plan[path], skipped[path] = None, reason
            continue
        plan[path] = settings
    return plan, skipped


def quantization_record(plan: dict, bits: int, group_size: int, user_config: dict, mode: str) -> dict:
    """The ``quantization`` entry of config.json (mlx-lm's format; ``mode`` per layer where it differs)."""
    base = {"bits": user_config.get("bits", bits), "group_size": user_config.get("group_size", group_size)}
    record = {"group_size": base["group_size"], "bits": base["bits"], "mode": mode}
    for path, settings in plan.items():
        if settings is None and user_config:
            record[path] = False
        elif settings is not None and settings != base:
            layer = {k: v for k, v in settings.items() if k != "format"}
            record[path] = {**layer, "mode": layer_format(settings, mode)}
    return record


def stored_arrays(weight_format, stored) -> dict:
    """suffix -> array for a layer's packed arrays (absent optional arrays dropped)."""
    return {suffix: array for suffix, array in zip(weight_format.stored, stored) if array is not None}


def store_numpy(model, chosen: dict) -> None:
    """Replace numpy layers' weights with ``chosen`` (path -> {suffix: array})."""
    for path, arrays in chosen.items():
        model.weights.update({f"{path}.{suffix}": a for suffix, a in arrays.items()})
    model.drop_cache()


def apply_numpy(model, plan: dict, weight_format, progress: bool) -> None:
    todo = [(p, s) for p, s in plan.items() if s is not None]
    chosen = {path: stored_arrays(weight_format, weight_format.pack(model.weights[f"{path}.weight"], **settings))
              for path, settings in tqdm(todo, desc="quantizing", disable=not progress)}
    store_numpy(model, chosen)


def apply_mlx(model, plan: dict, chosen: dict | None = None) -> None:
    """nn.quantize with ``plan`` (affine layers); then, if given, overwrite layers with ``chosen``
    (path -> {suffix: array})."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    from .loading import mlx_array

    def predicate(path, module):
        settings = plan.get(path)
        return False if settings is None else {"bits": settings["bits"], "group_size": settings["group_size"],
                                               "mode": "affine"}

    nn.quantize(model, class_predicate=predicate)
    if chosen:
        model.update(tree_unflatten([(f"{path}.{suffix}", mlx_array(array)) for path, arrays in chosen.items()
                                     for suffix, array in arrays.items()]))
    mx.eval(model.parameters())


def weight_dtypes(model, paths) -> dict:
    """Layer path -> numpy dtype of its float weight (what its scales and biases are stored in)."""
    if backend_of(model) == "numpy":
        return {path: model.weights[f"{path}.weight"].dtype for path in paths}
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(model.parameters()))
    return {path: FLOAT_DTYPES[str(params[f"{path}.weight"].dtype).split(".")[-1]] for path in paths}


def layer_importance(engine, names, tokens: np.ndarray, progress: bool) -> dict:
    """Mean squared input per column [K] of each layer in ``names``, from one pass of ``engine``
    (a float NumpyLlama) over ``tokens`` [S, T]. The output head sees the final norm's outputs."""
    stats = InputStatistics(names, gram=False)
    engine.observer = stats
    try:
        for first in tqdm(range(0, len(tokens), STATISTICS_BATCH), desc="activation statistics",
                          disable=not progress):
            h = engine.embed(tokens[first : first + STATISTICS_BATCH])
            for layer in range(engine.num_layers):
                h = engine.block(layer, h)
            stats(engine.head_name, engine.norm("model.norm", h))
    finally:
        engine.observer = None
    return {name: stats.importance(name) for name in names if name in stats.tokens}


def choose_layer(w: np.ndarray, weight_format, settings: dict, method: str, importance, per_row_scale):
    """Stored arrays {suffix: array} of one layer ``w`` [N, K] in ``weight_format``.
    per_row_scale None: on for lut groups of more than one row (a one-row palette absorbs the scale)."""
    bits, group_size = settings["bits"], settings["group_size"]
    if weight_format.name == "affine":
        if method == "rtn":
            return stored_arrays(weight_format, affine.pack(w, bits, group_size))
        q, scales, biases = weighted_quantize(w, importance, bits, group_size)
        return stored_arrays(weight_format, (affine.pack_codes(q, bits), scales, biases))
    if per_row_scale is None:
        per_row_scale = group_size > 1
    options = {"per_row_scale": per_row_scale} if weight_format.name == "lut" else {}
    return stored_arrays(weight_format, weight_format.pack(w, bits, group_size, importance=importance, **options))


def quantize_packed(model, plan: dict, default: str, method: str, tokens, per_row_scale,
                    progress: bool) -> None:
    """Pack every planned layer with the numpy twins (any mix of formats) and store it in ``model``."""
    todo = {path: settings for path, settings in plan.items() if settings is not None}
    dtypes = weight_dtypes(model, todo)
    engine = numpy_engine(model)
    importance = layer_importance(engine, list(todo), tokens, progress) if method == "imatrix" else {}
    chosen = {}
    for path, settings in tqdm(todo.items(), desc="quantizing", disable=not progress):
        w = engine.weights[f"{path}.weight"].astype(dtypes[path], copy=False)
        chosen[path] = choose_layer(w, get_format(layer_format(settings, default)), settings, method,
                                    importance.get(path), per_row_scale)
    if backend_of(model) == "numpy":
        store_numpy(model, chosen)
        return
    from .layers import lowbit_module

    affine_plan = {p: s for p, s in todo.items() if layer_format(s, default) == "affine"}
    apply_mlx(model, affine_plan, {p: chosen[p] for p in affine_plan})
    modules = dict(model.named_modules())
    swapped = [(path, lowbit_module(layer_format(settings, default), settings, chosen[path], modules[path]))
               for path, settings in todo.items() if path not in affine_plan]
    from mlx.utils import tree_unflatten

    model.update_modules(tree_unflatten(swapped))


def float_dtypes(model) -> dict:
    """Parameter name -> numpy dtype of every floating-point parameter of ``model``."""
    if backend_of(model) == "numpy":
        return {name: value.dtype for name, value in model.weights.items() if value.dtype in FLOAT_DTYPES.values()}
    from mlx.utils import tree_flatten

    dtypes = {name: str(value.dtype).split(".")[-1] for name, value in tree_flatten(model.parameters())}
    return {name: FLOAT_DTYPES[dtype] for name, dtype in dtypes.items() if dtype in FLOAT_DTYPES}


def store_floats(model, updates: dict) -> None:
    """Write float parameters ``updates`` {name: array in the parameter's dtype} into ``model``."""
    if not updates:
        return
    if backend_of(model) == "numpy":
        model.weights.update(updates)
        model.drop_cache()
        return
    from mlx.utils import tree_unflatten

    from .loading import mlx_array

    model.update(tree_unflatten([(name, mlx_array(value)) for name, value in updates.items()]))


def quantize_calibrated(model, plan: dict, method: str, tokens, record: dict, progress: bool) -> None:
    """Choose values with :func:`mlx_slm.quant.sequential.sequential_choose` and store them (and AWQ's
    rescaled float parameters) in ``model``; AWQ's group count goes to ``record["awq"]``."""
    from .quant.sequential import sequential_choose

    todo = [path for path, settings in plan.items() if settings is not None]
    dtypes = weight_dtypes(model, todo)
    engine = numpy_engine(model)
    choice = sequential_choose(engine, plan, tokens, method, dtypes, record.get("gptq"), record.get("awq"),
                               progress=progress, param_dtypes=float_dtypes(model))
    chosen = {path: stored_arrays(get_format("affine"), stored) for path, stored in choice.results.items()}
    store_floats(model, choice.float_updates)
    if method == "awq":
        alphas = [alpha for _, alpha in choice.scaled if alpha is not None]
        record["awq"].update(groups=len(choice.scaled), scaled_groups=sum(a > 0 for a in alphas),
                             mean_alpha=round(float(np.mean(alphas)), 4) if alphas else None)
    if backend_of(model) == "numpy":
        store_numpy(model, chosen)
    else:
        apply_mlx(model, plan, chosen)


def sensitivity_windows(num_samples: int, seq_len: int) -> tuple[int, int]:
    """(windows, tokens) the target_bpw planner measures on: the calibration's, capped at
    :data:`SENSITIVITY_WINDOWS` (each layer costs a rerun of the model on them)."""
    return min(num_samples, SENSITIVITY_WINDOWS[0]), min(seq_len, SENSITIVITY_WINDOWS[1])


def budget_config(model, target_bpw: float, tokenizer, calib, num_samples: int, seq_len: int,
                  progress: bool) -> tuple[dict, dict]:
    """(per-layer config, plan report) meeting ``target_bpw``: sensitivities measured on
    :func:`sensitivity_windows` of the calibration text."""
    from .quant.budget import format_report, target_bpw_config

    tokens, record = calibration_windows(tokenizer, calib, *sensitivity_windows(num_samples, seq_len))
    config, report = target_bpw_config(model, float(target_bpw), tokens, progress=progress)
    log.info("%s", format_report(report))
    return config, {**report, "calibration": record}


def float_teacher(model):
    """A second MLX model sharing ``model``'s current arrays (they are immutable, so this costs
    no memory): the float teacher that stays behind when ``model`` is quantized in place."""
    teacher = type(model)(model.args)
    teacher.update(model.parameters())
    set_model_config(teacher, model_config(model))
    return teacher


def require_training(model, method: str) -> None:
    if backend_of(model) != "mlx":
        raise MLXRequiredError(f"method {method!r} (training)")


def calibrated_teacher(model, settings: dict):
    """(calibration windows, their record, the float teacher) for a trained method."""
    tokens, calibration = calibration_windows(settings["tokenizer"], settings["calib"], settings["num_samples"],
                                              settings["seq_len"])
    return tokens, calibration, float_teacher(model)


def quantize_blockwise(model, options, settings: dict):
    """Method "blockwise": quantize with the start method, then train block by block
    (:func:`mlx_slm.quant.blockwise.reconstruct_blocks`)."""
    require_training(model, "blockwise")
    from .quant.blockwise import reconstruct_blocks
    from .quant.blockwise_config import BlockwiseConfig, default_start

    config = options if isinstance(options, BlockwiseConfig) else BlockwiseConfig.from_options(options)
    if config.start is None:
        config = replace(config, start=default_start(settings["format"]))
    config.check()
    tokens, calibration, teacher = calibrated_teacher(model, settings)
    quantize(model, method=config.start, **settings)
    report = reconstruct_blocks(model, teacher, tokens, config, progress=settings["progress"])
    model_settings = model_config(model)
    model_settings["mlx_slm"].update(method="blockwise", calibration=calibration, blockwise=report)
    set_model_config(model, model_settings)
    return model


def quantize_learned(model, options: dict | None, blockwise_options, settings: dict):
    """Method "learned": quantize with ``options["start"]``, then learn scales and biases."""
    require_training(model, "learned")
    from .quant.learned import DEFAULTS, learn_quantization

    options = dict(options or {})
    start = options.pop("start", "gptq")
    if start not in LEARNED_STARTS:
        raise SLMError(f"learned_options start must be one of {LEARNED_STARTS}, not {start!r}")
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise SLMError(f"unknown learned_options {sorted(unknown)}; known: {sorted(['start', *DEFAULTS])}")
    if settings["format"] != "affine":
        raise SLMError(f"method 'learned' trains affine scales and biases, not the {settings['format']!r} format")
    tokens, calibration, teacher = calibrated_teacher(model, settings)
    if start == "blockwise":
        quantize_blockwise(model, blockwise_options, settings)
    else:
        quantize(model, method=start, **settings)
    report = learn_quantization(model, teacher, tokens, progress=settings["progress"], **options)
    model_settings = model_config(model)
    model_settings["mlx_slm"].update(method="learned", calibration=calibration, learned={"start": start, **report})
    set_model_config(model, model_settings)
    return model


def quantize(model, bits: int | None = None, group_size: int | None = None, method: str = "rtn", config=None,
             format: str = "affine", progress: bool = True, calib=None, tokenizer=None,
             num_samples: int = DEFAULT_NUM_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN, gptq_options: dict | None = None,
             per_row_scale: bool | None = None, awq_options: dict | None = None,
             learned_options: dict | None = None, target_bpw: float | None = None, blockwise_options=None):
    """Quantize ``model`` in place and return it.

    format: a registered weight format (see :mod:`mlx_slm.formats`): "affine" (MLX's own;
    bits 2-8 but 7, group_size 32/64/128 input columns per scale; default 4 / 64),
    "lut" (palettized: bits 2/3/4, group_size = OUTPUT rows sharing one palette; default
    4 / 8), "ternary" or "ternary_b3" (BitNet b1.58 in 2-bit or base-3 storage: bits 2,
    group_size input columns per absmean scale, 0 = one per row; default 0).
    bits / group_size: global settings (None: the format's defaults).
    method: "rtn" (affine: as mlx_lm.convert; lut: plain k-means; ternary: absmean),
    "imatrix" (importance-weighted: affine scales/biases, lut k-means, ternary scale
    refit), "gptq" or "awq" (affine only); the last three need ``calib``. "awq" rescales
    each scaling group found in the model (:mod:`mlx_slm.quant.graph`: a norm or linear
    and the linears reading its output) by activation magnitude, then quantizes with
    its quantizer; the rescaled norm weights are stored in the model.
    config: per-layer overrides (dict or YAML/JSON path; see :mod:`mlx_slm.qconfig`); a
    layer's ``format`` may differ from the call's.
    calib: calibration text (.txt/.jsonl path or list of strings), cut with
    ``tokenizer`` into ``num_samples`` windows of ``seq_len`` tokens.
    gptq_options: damp (0.01), block_size (32), act_order (True), grid ("imatrix" or "rtn"),
    refit (True: scales and biases refitted to the chosen codes);
    also used by awq with quantizer "gptq".
    awq_options: grid (20 alpha points in [0, 1]), quantizer ("imatrix", which also searches
    each group's range, or "gptq").
    method "blockwise" (MLX only): quantize with ``blockwise_options.start`` (default gptq for
    affine, imatrix for lut and ternary), then train each decoder block's weights and
    quantization parameters through the format's rounding to reproduce the float
    model's block outputs (:mod:`mlx_slm.quant.blockwise`; ``blockwise_options`` is a
    :class:`~mlx_slm.quant.blockwise.BlockwiseConfig` or a dict of its fields).
    method "learned" (MLX only): quantize with ``learned_options["start"]`` (default "gptq"),
    then train every affine layer's scales and biases by KL distillation from the float
    model on the calibration windows (:func:`mlx_slm.quant.learned.learn_quantization`;
    the other ``learned_options`` are its settings); never worse than the start on the
    held-out windows.
    target_bpw: plan each layer's bits / group size (:mod:`mlx_slm.quant.budget`) so the
    matrices average this many bits per weight (as ``mlx_slm.stats`` counts them) with the
    least predicted KL, measured on at most 8 windows of 128 tokens of the calibration text (
    every layer costs one rerun of the model on them); the plan is saved in the config
    (``mlx_slm.plan``). Not combined with ``config``.
    per_row_scale: lut only: store a float16 max|w| per output row and cluster w / scale, so
    rows of different magnitude share a palette well (16/K bits per weight). None (default):
    on when a palette serves more than one row (on SmolLM2 at 4 bits, group 8: KL 1.11
    instead of 1.85), off for one-row palettes, which absorb the scale.
    Layers whose shape does not fit their format stay in float and are logged.
    """
    check_settings(method, format, None, None)
    if learned_options is not None and method != "learned":
        raise SLMError(f"learned_options are for method 'learned', not {method!r}")
    if blockwise_options is not None and method != "blockwise" and (learned_options or {}).get("start") != "blockwise":
        raise SLMError(f"blockwise_options are for method 'blockwise' (or learned from blockwise), not {method!r}")
    if method in ("learned", "blockwise"):
        settings = {"bits": bits, "group_size": group_size, "config": config, "format": format, "progress": progress,
                    "calib": calib, "tokenizer": tokenizer, "num_samples": num_samples, "seq_len": seq_len,
                    "gptq_options": gptq_options, "awq_options": awq_options, "target_bpw": target_bpw,
                    "per_row_scale": per_row_scale}
        if method == "blockwise":
            return quantize_blockwise(model, blockwise_options, settings)
        return quantize_learned(model, learned_options, blockwise_options, settings)
    weight_format = get_format(format)
    plan_report = None
    if target_bpw is not None:
        if config:
            raise SLMError("target_bpw plans every layer's settings itself: do not pass a config with it")
        if format != "affine":
            raise SLMError(f"target_bpw plans affine bits and group sizes, not the {format!r} format")
        config, plan_report = budget_config(model, target_bpw, tokenizer, calib, num_samples, seq_len, progress)
    bits = weight_format.default_bits if bits is None else bits
    group_size = weight_format.default_group_size if group_size is None else group_size
    user_config = check_config(read_config_file(config) if isinstance(config, (str, bytes)) or
                               hasattr(config, "__fspath__") else (config or {}))
    weight_format.check(user_config.get("bits", bits), user_config.get("group_size", group_size))
    model_settings = model_config(model)
    if model_settings.get("quantization"):
        raise SLMError("the model is already quantized; start from a float model")
    layers = candidate_layers(model)
    if not layers:
        raise SLMError("the model has no layers that can be quantized")
    plan, skipped = quantization_plan(layers, bits, group_size, user_config, weight_format)
    formats = {layer_format(settings, format) for settings in plan.values() if settings is not None}
    if not formats and len(skipped) > sum(reason.startswith("kept in float") for reason in skipped.values()):
        path, reason = next((p, r) for p, r in skipped.items() if not r.startswith("kept in float"))
        raise SLMError(f"no layer fits the {format} format with these settings (e.g. {path}: {reason})")
    if method in AFFINE_ONLY and formats - {"affine"}:
        raise SLMError(f"method {method!r} supports the affine format only, not {sorted(formats - {'affine'})}")
    record = {"method": method, "unquantized": skipped}
    if plan_report is not None:
        record["plan"] = plan_report
    if "lut" in formats:
        record["per_row_scale"] = "auto" if per_row_scale is None else bool(per_row_scale)
    tokens = None
    if method in CALIBRATED:
        tokens, record["calibration"] = calibration_windows(tokenizer, calib, num_samples, seq_len)
        unknown = set(gptq_options or {}) - set(GPTQ_DEFAULTS)
        if unknown:
            raise SLMError(f"unknown gptq_options {sorted(unknown)}; known: {sorted(GPTQ_DEFAULTS)}")
        if method == "awq":
            record["awq"] = awq.check_options(awq_options)
        if method == "gptq" or record.get("awq", {}).get("quantizer") == "gptq":
            record["gptq"] = {**GPTQ_DEFAULTS, **(gptq_options or {})}
            if record["gptq"]["grid"] not in ("imatrix", "rtn"):
                raise SLMError(f"gptq_options grid must be 'imatrix' or 'rtn', not {record['gptq']['grid']!r}")
    for path, reason in skipped.items():
        log.warning("not quantizing %s: %s", path, reason)
    if formats - {"affine"}:
        if method == "imatrix":
            record["statistics"] = "one pass of the float model over the calibration windows"
        quantize_packed(model, plan, format, method, tokens, per_row_scale, progress)
    elif method in CALIBRATED:
        quantize_calibrated(model, plan, method, tokens, record, progress)
    elif backend_of(model) == "numpy":
        apply_numpy(model, plan, weight_format, progress)
    else:
        apply_mlx(model, plan)
    model_settings["quantization"] = quantization_record(plan, bits, group_size, user_config, format)
    model_settings["mlx_slm"] = {**(model_settings.get("mlx_slm") or {}), **record}  # keeps pruning, fuse records
    set_model_config(model, model_settings)
    return model
