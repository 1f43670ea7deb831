"""Whole-model quantization: :func:`quantize` runs a registered method (:mod:`mlx_slm.quant.methods`);
what the post-training methods share (planning, storing, recording) lives here.

Affine ``rtn`` gives, weight for weight, what ``mlx_lm.convert -q`` gives with the
same bits and group size: on MLX it is ``nn.quantize``; on numpy it is the
bit-exact twin in :mod:`mlx_slm.formats.affine`. The calibrated methods
``imatrix``, ``gptq`` and ``awq`` (:mod:`mlx_slm.quant`) choose other values in the
same format from statistics of calibration text run one decoder block at a time, on the
numpy engine or on mlx-lm's own blocks in MLX (:mod:`mlx_slm.calib`; ``awq`` also rescales
norm weights and a few float parameters, leaving the float model's function unchanged).

The ``lut`` and ``ternary`` formats (and any per-layer mix of formats) are packed
by their numpy twins on either backend; on MLX the packed layers become
:mod:`mlx_slm.layers` modules. Their ``imatrix`` method takes each layer's input
importance (mean squared activation per column) from ONE pass of the float model
over the calibration windows, on the calibration engine that computes the other methods'.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from .calib.blocks import arrays_of
from .calib.statistics import InputStatistics
from .data.windows import DEFAULT_NUM_SAMPLES, DEFAULT_SEQ_LEN, Calibration
from .errors import SLMError
from .formats import get_format
from .io.safetensors_np import check_spill_room
from .model_access import (
    access,
    float_dtypes,
    model_config,
    require_training,
    set_model_config,
    stored_arrays,
    weight_dtypes,
)
from .progress import hidden
from .qconfig import check_config, read_config_file, resolve_layer
from .quant.config import QuantizeConfig
from .quant.methods import get_method

log = logging.getLogger("mlx_slm")
STATISTICS_BATCH = 4  # calibration windows per forward pass
SENSITIVITY_WINDOWS = (8, 128)  # calibration windows x tokens the target_bpw planner measures on


class Job(NamedTuple):
    """What a post-training method's ``apply(model, plan, job)`` works with: the checked
    ``settings`` (:class:`QuantizeConfig`), the calibration ``tokens`` [S, T] (None for an
    uncalibrated method), the ``record`` it may add to (saved under ``mlx_slm`` in
    config.json), ``progress``, and the ``formats`` the plan uses."""

    settings: QuantizeConfig
    tokens: np.ndarray | None
    record: dict
    progress: bool
    formats: set


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


def layer_importance(engine, names, tokens: np.ndarray, progress: bool) -> dict:
    """Mean squared input per column [K] of each layer in ``names``, from one pass of ``engine``
    (a calibration engine of the float model, :mod:`mlx_slm.calib.blocks`) over ``tokens`` [S, T].
    The output head sees the final norm's outputs."""
    stats = InputStatistics(names, False, arrays_of(engine))
    engine.observer = stats
    try:
        for first in tqdm(range(0, len(tokens), STATISTICS_BATCH), desc="activation statistics",
                          disable=hidden(progress)):
            h = engine.embed(tokens[first : first + STATISTICS_BATCH])
            for layer in range(engine.num_layers):
                h = engine.block(layer, h)
            stats(engine.head_name, engine.head_input(h))
    finally:
        engine.observer = None
    stats.release()
    return {name: stats.importance(name) for name in names if stats.watched(name)}


def choose_layer(w: np.ndarray, weight_format, settings: dict, method: str, importance, per_row_scale):
    """Stored arrays {suffix: array} of one layer ``w`` [N, K] in ``weight_format``: plain rounding for
    "rtn", else the format's importance-weighted choice; ``per_row_scale`` the request's (None: the
    format's default)."""
    bits, group_size = settings["bits"], settings["group_size"]
    options = weight_format.pack_options(group_size, search=method != "rtn", per_row_scale=per_row_scale)
    return stored_arrays(weight_format, weight_format.pack(w, bits, group_size, importance=importance, **options))


def quantize_packed(model, plan: dict, method: str, job: Job) -> None:
    """Pack every planned layer with the numpy twins (any mix of formats) and store it in ``model``;
    ``method`` "rtn" or "imatrix" (weighted by one pass of the float model over ``job.tokens``)."""
    todo = {path: settings for path, settings in plan.items() if settings is not None}
    dtypes = weight_dtypes(model, todo)
    view = access(model)
    importance, weights = {}, view.numpy_weights()  # rtn reads the weights only: any architecture
    if method == "imatrix":
        engine = view.calibration_engine(job.settings.cpu_engine)
        job.record["calibration_engine"] = engine.backend
        importance, weights = layer_importance(engine, list(todo), job.tokens, job.progress), engine.weights
    default = job.settings.format
    chosen = {}
    for path, settings in tqdm(todo.items(), desc="quantizing", disable=hidden(job.progress)):
        w = weights[f"{path}.weight"].astype(dtypes[path], copy=False)
        chosen[path] = choose_layer(w, get_format(layer_format(settings, default)), settings, method,
                                    importance.get(path), job.settings.per_row_scale)
    view.store_layers(todo, chosen, default)


def stored_bytes(settings: dict, shape: tuple[int, int]) -> int:
    """About how many bytes a layer of ``shape`` [N, K] takes in its planned format (codes and parameters)."""
    bpw = get_format(settings["format"]).bits_per_weight(settings["bits"], settings["group_size"], shape)
    return int(shape[0] * shape[1] * bpw / 8)


def quantize_calibrated(model, plan: dict, method: str, job: Job):
    """Choose values with :func:`mlx_slm.quant.sequential.sequential_choose` (``method``
    "imatrix", "gptq" or "awq", with the settings in ``job.record``) and store them (and AWQ's
    rescaled float parameters) in ``model``. The statistics come from the engine
    :func:`~mlx_slm.model_access.choose_engine` picks (recorded as ``calibration_engine``): the numpy
    engine, or mlx-lm's own blocks on MLX for every architecture it runs. Returns the choice."""
    from .quant.sequential import sequential_choose

    plan = {path: None if settings is None else {**settings, "format": layer_format(settings, job.settings.format)}
            for path, settings in plan.items()}
    todo = [path for path, settings in plan.items() if settings is not None]
    dtypes = weight_dtypes(model, todo)
    view = access(model)

    def store(results: dict) -> None:  # one block's layers at a time: their float weights are freed now
        chosen = {path: stored_arrays(get_format(plan[path]["format"]), stored) for path, stored in results.items()}
        view.store_layers(plan, chosen, job.settings.format, spill=True)  # the codes wait on disk for the save
        view.release(chosen)

    engine = view.calibration_engine(job.settings.cpu_engine)
    check_spill_room(sum(stored_bytes(plan[path], engine.shape(path)) for path in todo))
    job.record["calibration_engine"] = engine.backend
    choice = sequential_choose(engine, plan, job.tokens, method, dtypes, job.record.get("gptq"),
                               job.record.get("awq"), progress=job.progress, param_dtypes=float_dtypes(model),
                               store=store)
    view.write(choice.float_updates)
    return choice


def sensitivity_windows(num_samples: int, seq_len: int) -> tuple[int, int]:
    """(windows, tokens) the target_bpw planner measures on: the calibration's, capped at
    :data:`SENSITIVITY_WINDOWS` (each layer costs a rerun of the model on them)."""
    return min(num_samples, SENSITIVITY_WINDOWS[0]), min(seq_len, SENSITIVITY_WINDOWS[1])


def budget_config(model, target_bpw: float, calibration: Calibration, progress: bool,
                  cpu_engine: str | None = None) -> tuple[dict, dict]:
    """(per-layer config, plan report) meeting ``target_bpw``: sensitivities measured on
    :func:`sensitivity_windows` of the calibration text, on the calibration engine ``cpu_engine``
    prefers (as the calibrated methods' statistics are)."""
    from .quant.budget import plan_table, target_bpw_config

    windows = sensitivity_windows(calibration.num_samples, calibration.seq_len)
    tokens, record = Calibration(calibration.text, calibration.tokenizer, *windows).windows()
    config, report = target_bpw_config(model, float(target_bpw), tokens, progress=progress, cpu_engine=cpu_engine)
    log.info("%s", plan_table(report))
    return config, {**report, "calibration": record}


def float_teacher(model):
    """A second MLX model sharing ``model``'s current arrays (they are immutable, so this costs
    no memory): the float teacher that stays behind when ``model`` is quantized in place."""
    teacher = type(model)(model.args)
    teacher.update(model.parameters())
    set_model_config(teacher, model_config(model))
    return teacher


def record_result(model, **entries) -> None:
    """Add ``entries`` to the ``mlx_slm`` record of the model's config (a trained method's
    report over its start's record)."""
    saved = model_config(model)
    saved["mlx_slm"].update(entries)
    set_model_config(model, saved)


def check_float(model) -> None:
    """One clear error for a model that is already quantized."""
    if model_config(model).get("quantization"):
        raise SLMError("the model is already quantized; start from a float model")


def post_training(model, settings: QuantizeConfig, calibration: Calibration, progress: bool, apply):
    """What every post-training method shares: plan each layer's format and settings, cut the
    calibration windows (calibrated methods), let ``apply(model, plan, job)`` choose and store
    the values, and record the quantization in the model's config."""
    method = get_method(settings.method)
    weight_format = get_format(settings.format)
    layers_config, plan_report = settings.layers, None
    if settings.target_bpw is not None:
        layers_config, plan_report = budget_config(model, settings.target_bpw, calibration, progress,
                                                   settings.cpu_engine)
    bits, group_size = settings.bits_and_group()
    user_config = check_config(read_config_file(layers_config) if isinstance(layers_config, (str, bytes)) or
                               hasattr(layers_config, "__fspath__") else (layers_config or {}))
    weight_format.check(user_config.get("bits", bits), user_config.get("group_size", group_size))
    check_float(model)
    model_settings = model_config(model)
    layers = access(model).candidate_layers()
    if not layers:
        raise SLMError("the model has no layers that can be quantized")
    plan, skipped = quantization_plan(layers, bits, group_size, user_config, weight_format)
    formats = {layer_format(layer, settings.format) for layer in plan.values() if layer is not None}
    if not formats and len(skipped) > sum(reason.startswith("kept in float") for reason in skipped.values()):
        path, reason = next((p, r) for p, r in skipped.items() if not r.startswith("kept in float"))
        raise SLMError(f"no layer fits the {settings.format} format with these settings (e.g. {path}: {reason})")
    unsupported = sorted(name for name in formats if not method.supports(name))
    if unsupported:
        raise SLMError(method.refuses(unsupported[0] if len(unsupported) == 1 else unsupported))
    record = {"method": method.name, "unquantized": skipped}
    if plan_report is not None:
        record["plan"] = plan_report
    if "lut" in formats:
        record["per_row_scale"] = "auto" if settings.per_row_scale is None else bool(settings.per_row_scale)
    tokens = None
    if method.calibrated:
        tokens, record["calibration"] = calibration.windows()
    for path, reason in skipped.items():
        log.warning("not quantizing %s: %s", path, reason)
    apply(model, plan, Job(settings, tokens, record, progress, formats))
    model_settings["quantization"] = quantization_record(plan, bits, group_size, user_config, settings.format)
    model_settings["mlx_slm"] = {**(model_settings.get("mlx_slm") or {}), **record}  # keeps pruning, fuse records
    set_model_config(model, model_settings)
    return model


def run_method(model, settings: QuantizeConfig, calibration: Calibration, progress: bool):
    """Run ``settings.method`` (a checked request) on ``model``; the trained methods call this for
    their start."""
    method = get_method(settings.method)
    if method.training:
        require_training(f"method {method.name!r} (training)", model)
    return method.run(model, settings, calibration, progress)


def keyword_request(bits=None, group_size=None, method="rtn", config=None, format="affine", calib=None,
                    tokenizer=None, num_samples=DEFAULT_NUM_SAMPLES, seq_len=DEFAULT_SEQ_LEN, gptq_options=None,
                    per_row_scale=None, awq_options=None, learned_options=None, target_bpw=None,
                    blockwise_options=None, e2e_options=None, cpu_engine=None,
                    calib_data="calib") -> tuple[QuantizeConfig, Calibration]:
    """The keyword form of :func:`quantize` as (QuantizeConfig, Calibration): ``config`` is the
    per-layer overrides, ``calib`` the calibration text (``calib_data="teacher"``: none, text sampled
    from the float model instead), ``METHOD_options`` that method's options."""
    given = {"gptq": gptq_options, "awq": awq_options, "learned": learned_options, "blockwise": blockwise_options,
             "e2e": e2e_options}
    settings = QuantizeConfig(method=method, format=format, bits=bits, group_size=group_size,
                              options={name: value for name, value in given.items() if value is not None},
                              layers=config, target_bpw=target_bpw, per_row_scale=per_row_scale,
                              cpu_engine=cpu_engine)
    return settings, Calibration(calib, tokenizer, num_samples, seq_len, calib_data)


def quantize(model, settings: QuantizeConfig | None = None, calibration: Calibration | None = None, *,
             progress: bool = True, **keywords):
    """Quantize ``model`` in place and return it.

    ``quantize(model, QuantizeConfig(method="gptq", bits=3), Calibration("kjv.txt", tokenizer))``;
    or the keyword form ``quantize(model, bits=3, method="gptq", calib="kjv.txt",
    tokenizer=tokenizer, gptq_options={...})`` (:func:`keyword_request` says how the keywords
    map). The methods are the rows of :mod:`mlx_slm.quant.methods` (their options are
    dataclasses), the formats those of
    :mod:`mlx_slm.formats` (affine, lut, ternary, ternary_b3). Layers whose shape does not fit
    their format stay in float and are logged; the request and its results are saved in the
    model's config (``quantization`` as mlx-lm reads it, ``mlx_slm`` for the rest).
    """
    if settings is None:
        settings, calibration = keyword_request(**keywords)
    elif keywords:
        raise SLMError(f"pass either a QuantizeConfig or keywords, not both (got {sorted(keywords)})")
    settings, calibration = settings.check(), (calibration or Calibration()).check()
    if calibration.data == "teacher" and (get_method(settings.method).calibrated or settings.target_bpw is not None):
        calibration = sampled_calibration(model, settings, calibration, progress)
    return run_method(model, settings, calibration, progress)


def sampled_calibration(model, settings: QuantizeConfig, calibration: Calibration, progress: bool) -> Calibration:
    """``calibration`` (``data="teacher"``, checked) on text sampled from the float ``model`` before
    it is quantized (:meth:`Calibration.sampled`), with the other texts the methods ``settings``
    runs train on at the same seed (:meth:`~mlx_slm.quant.methods.MethodOptions.teacher_tokens`)."""
    check_float(model)
    require_training("calibration on text sampled from the model (calib_data='teacher')", model,
                     reason="the sampler runs MLX models only")
    more = {options.teacher_tokens(calibration.seq_len, calibration.seed) for options in settings.options.values()}
    return calibration.sampled(model, progress, sorted(more - {0}))
