"""Mixed precision to a bits-per-weight budget: one affine setting per layer.

Given each layer's predicted KL loss per setting (:mod:`mlx_slm.quant.sensitivity`) and
its exact stored bits, choose the settings with the least total predicted loss whose bits
fit ``target_bpw * matrix weights``. bpw is :func:`mlx_slm.stats.weight_stats`' definition:
every stored bit of the 2-D matrices (codes + scales + biases, or the float dtype's bits)
over their weight count, layers that stay float included.

The choice is a multiple-choice knapsack, solved exactly by dynamic programming over the
bit budget in units of the greatest common divisor of all costs (coarser units, with costs
rounded up, only if that would exceed :data:`MAX_UNITS` steps).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SLMError
from .sensitivity import Sensitivity, measure_sensitivity

MAX_UNITS = 1 << 18  # budget steps of the dynamic program
FLOAT = "fp16"  # the qconfig word for "keep this layer in float"


def cheapest_plan(costs: list, losses: list, budget: float) -> list[int]:
    """Option index per layer minimizing sum(losses) with sum(costs) <= budget.

    costs: per layer an int array [options] of stored bits; losses: per layer a float array
    [options]. Among equally good plans the one spending the most bits wins. Raises
    SLMError if even the cheapest options exceed the budget.
    """
    unit = math.gcd(*(int(c) for layer in costs for c in layer))
    unit = max(unit, math.ceil(budget / MAX_UNITS))
    units = [-(-np.asarray(c, np.int64) // unit) for c in costs]  # rounded up: the plan never overspends
    capacity = int(budget // unit)
    best = np.full(capacity + 1, np.inf)
    best[0] = 0.0
    choices = np.zeros((len(costs), capacity + 1), np.int16)
    for i, (layer_units, layer_losses) in enumerate(zip(units, losses)):
        new = np.full(capacity + 1, np.inf)
        for option, (u, loss) in enumerate(zip(layer_units, layer_losses)):
            if u > capacity:
                continue
            candidate = best[: capacity + 1 - u] + loss
            better = candidate < new[u:]
            new[u:][better] = candidate[better]
            choices[i, u:][better] = option
        best = new
    if not np.isfinite(best).any():
        raise SLMError("no combination of the layers' settings fits the budget")
    spent = capacity - int(np.argmin(best[::-1]))  # the largest spend among the minima
    plan = []
    for i in range(len(costs) - 1, -1, -1):
        option = int(choices[i, spent])
        plan.append(option)
        spent -= int(units[i][option])
    return plan[::-1]


def option_table(sensitivity: Sensitivity, keep_float: bool) -> list[tuple]:
    """Per layer with settings: (path, settings [+ FLOAT], stored bits [options], predicted dKL [options])."""
    table = []
    for path, layer in sensitivity.layers.items():
        if not layer.options:
            continue
        settings, bits, loss = list(layer.options), layer.option_bits(), layer.predicted_kld()
        if keep_float:
            rows, width = layer.shape
            settings.append(FLOAT)
            bits, loss = np.append(bits, rows * width * layer.dtype_bits), np.append(loss, 0.0)
        table.append((path, settings, bits, loss))
    return table


def achievable_range(sensitivity: Sensitivity, table: list) -> tuple[float, float]:
    """(lowest, highest) bpw any plan reaches."""
    low = sensitivity.fixed_bits + sum(int(bits.min()) for _, _, bits, _ in table)
    high = sensitivity.fixed_bits + sum(int(bits.max()) for _, _, bits, _ in table)
    return low / sensitivity.matrix_weights, high / sensitivity.matrix_weights


def describe(settings) -> str:
    return settings if settings == FLOAT else f"{settings['bits']}b/g{settings['group_size']}"


def plan_for_budget(sensitivity: Sensitivity, target_bpw: float, keep_float: bool = True) -> tuple[dict, dict]:
    """Per-layer settings meeting ``target_bpw`` with the least predicted KL.

    keep_float: "keep in float" (the weight's dtype, loss 0) is one of each layer's options.
    Returns ``(config, report)``: config ``{"by_name": {path: {"bits", "group_size"} | "fp16"}}``
    for :func:`mlx_slm.quantize` (method "rtn" reproduces the predicted bpw exactly; the
    calibrated methods store the same bits); report: target, reached bpw, achievable range,
    total predicted KL, calibration shape, the engine that measured it, seconds, and per layer one row (layer,
    shape, choice, bpw, probe dKL, predicted dKL, unavailable group sizes).
    Raises SLMError outside the achievable range.
    """
    table = option_table(sensitivity, keep_float)
    if not table:
        raise SLMError("no layer of the model can be quantized")
    low, high = achievable_range(sensitivity, table)
    if not low - 1e-9 <= target_bpw <= high + 1e-9:
        raise SLMError(f"target {target_bpw} bits per weight is outside what this model can reach: "
                       f"{low:.3f} to {high:.3f} bpw")
    budget = target_bpw * sensitivity.matrix_weights - sensitivity.fixed_bits
    plan = cheapest_plan([bits for _, _, bits, _ in table], [loss for *_, loss in table], budget)
    rows, spent, predicted = [], sensitivity.fixed_bits, 0.0
    for (path, settings, bits, loss), option in zip(table, plan):
        layer = sensitivity.layers[path]
        spent, predicted = spent + int(bits[option]), predicted + float(loss[option])
        rows.append({"layer": path, "shape": list(layer.shape), "choice": describe(settings[option]),
                     "bpw": float(bits[option]) / (layer.shape[0] * layer.shape[1]),
                     "probe_kld": {role: round(kld, 6) for role, kld in layer.probe_kld.items()},
                     "predicted_kld": float(loss[option]), "unavailable": dict(layer.unavailable)})
    rows += [{"layer": path, "shape": list(layer.shape), "choice": "float (no setting fits)",
              "bpw": float(layer.dtype_bits), "probe_kld": {}, "predicted_kld": 0.0,
              "unavailable": dict(layer.unavailable)}
             for path, layer in sensitivity.layers.items() if not layer.options]
    config = {"by_name": {path: settings[option] if settings[option] == FLOAT else dict(settings[option])
                          for (path, settings, _, _), option in zip(table, plan)}}
    report = {"target_bpw": target_bpw, "bpw": spent / sensitivity.matrix_weights, "range_bpw": [low, high],
              "predicted_kld": predicted, "calibration_tokens": list(sensitivity.tokens),
              "sensitivity_engine": sensitivity.engine, "sensitivity_seconds": round(sensitivity.seconds, 1),
              "layers": rows}
    return config, report


def target_bpw_config(model, target_bpw: float, tokens: np.ndarray, probe: dict | None = None,
                      keep_float: bool = True, progress: bool = True,
                      cpu_engine: str | None = None) -> tuple[dict, dict]:
    """Measure ``model``'s sensitivity on calibration ``tokens`` [S, T] (a few windows of
    64-128 tokens suffice; ``cpu_engine`` as :func:`~.sensitivity.measure_sensitivity` takes it)
    and plan ``target_bpw``: see :func:`plan_for_budget`."""
    return plan_for_budget(measure_sensitivity(model, tokens, probe, progress, cpu_engine), target_bpw, keep_float)


def plan_table(report: dict) -> str:
    """The plan as a text table: a summary line, then one line per layer."""
    lines = [f"target {report['target_bpw']:.3f} bpw -> {report['bpw']:.4f} bpw "
             f"(achievable {report['range_bpw'][0]:.3f}-{report['range_bpw'][1]:.3f}); "
             f"predicted KL {report['predicted_kld']:.4f}; sensitivity on "
             f"{report['calibration_tokens'][0]}x{report['calibration_tokens'][1]} tokens "
             f"({report['sensitivity_engine']} engine) in {report['sensitivity_seconds']:.0f} s",
             f"{'layer':44} {'shape':>12} {'choice':>9} {'bpw':>6} {'probe dKL':>22} {'pred dKL':>9}  unavailable"]
    for row in report["layers"]:
        probe = ", ".join(f"{role} {kld:.4f}" for role, kld in row["probe_kld"].items())
        unavailable = "; ".join(f"{group}: {reason}" for group, reason in row["unavailable"].items())
        lines.append(f"{row['layer']:44} {'x'.join(map(str, row['shape'])):>12} {row['choice']:>9} "
                     f"{row['bpw']:6.3f} {probe:>22} {row['predicted_kld']:9.5f}  {unavailable}")
    return "\n".join(lines)
