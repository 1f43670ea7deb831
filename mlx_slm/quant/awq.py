"""Activation-aware scaling (AWQ idea, Lin et al., 2023) inside MLX's affine format.

For each scaling group (:mod:`.graph`: a producer and the linears that consume its
output) the consumers' input columns are multiplied by ``s`` [K] and the producer's
output channels divided by ``s``, which leaves the float model's function unchanged
but gives the quantizer finer steps on the columns that carry large activations.
``s = a^alpha`` (normalised) with ``a`` the root-mean-square activation per column;
alpha is chosen on a grid over [0, 1] to minimise the summed output error
``tr((W - W_hat) H (W - W_hat)^T)`` of the group's consumers, with ``H`` = E[x x^T]
from the calibration statistics. alpha = 0 (no scaling) is on the grid, so on that
error AWQ never does worse than the quantizer alone. The search runs on the calibration engine's
``arrays.for_methods()`` (:mod:`mlx_slm.calib.statistics`).
"""

from __future__ import annotations

import numpy as np

from ..calib.statistics import NumpyArrays
from ..errors import SLMError
from ..formats.dtypes import as_float32, round_to
from .imatrix import weighted_quantize
from .refit import dequantized

DEFAULTS = {"grid": 20, "quantizer": "imatrix"}
QUANTIZERS = ("imatrix", "gptq")
ACTIVATION_FLOOR = 1e-4  # columns quieter than this fraction of the loudest count as this loud
SEARCH_ROWS = 4096  # larger layers (e.g. an output head) are searched on this many evenly spaced rows
SEARCH_WEIGHTS = 4096 * 1024  # and wide ones on at most this many weights (a 14336-wide down_proj on 292 rows)


def check_options(options: dict | None) -> dict:
    """``options`` merged over :data:`DEFAULTS`, validated."""
    unknown = set(options or {}) - set(DEFAULTS)
    if unknown:
        raise SLMError(f"unknown awq_options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **(options or {})}
    grid = settings["grid"]
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 2:
        raise SLMError(f"awq_options grid must be an integer >= 2 (alpha points in [0, 1]), not {grid!r}")
    if settings["quantizer"] not in QUANTIZERS:
        raise SLMError(f"awq_options quantizer must be one of {QUANTIZERS}, not {settings['quantizer']!r}")
    return {**settings, "grid": int(grid)}


def candidate_scales(importance: np.ndarray, alpha: float) -> np.ndarray:
    """Scales s [K] float32 = a^alpha / sqrt(max * min) with a = sqrt(importance [K]) (floored)."""
    a = np.sqrt(np.maximum(np.asarray(importance, np.float64), 0))
    top = a.max()
    if top <= 0:
        return np.ones(len(a), np.float32)
    s = np.maximum(a, ACTIVATION_FLOOR * top) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def scaled_error(w: np.ndarray, importance: np.ndarray, hessian, s: np.ndarray, settings: dict, dtype,
                 arrays=NumpyArrays) -> float:
    """tr((W - W_hat) H (W - W_hat)^T) where W_hat = deq(quant(W diag(s))) diag(1/s).

    w: [N, K] float32; importance: [K]; hessian: [K, K] float32 (an array of ``arrays``' library);
    s: [K]; settings: bits, group_size. The quantizer is :func:`weighted_quantize` with the scaled
    columns' importance / s^2; it, the dequantization and the trace run on ``arrays``.
    """
    bits, group_size = settings["bits"], settings["group_size"]
    q, scales, biases = weighted_quantize(w * s, importance / np.square(s, dtype=np.float64), bits, group_size,
                                          dtype, arrays)
    delta = arrays.array(w) - dequantized(q, scales, biases, group_size, arrays) / arrays.array(s)
    return arrays.total((delta @ hessian) * delta)  # float32, summed pairwise on numpy (float64 would copy the product)


def search_rows(w: np.ndarray) -> np.ndarray:
    """At most ``min(SEARCH_ROWS, SEARCH_WEIGHTS // K)`` evenly spaced rows of ``w`` [N, K].

    Rows are quantized independently, so the rows kept estimate every alpha's error on the same
    sample; an alpha's cost grows with rows x K (the quantizer) and rows x K^2 (the trace), which
    this bounds for the wide layers of 1-8B models.
    """
    rows = max(1, min(SEARCH_ROWS, SEARCH_WEIGHTS // w.shape[1]))
    if len(w) <= rows:
        return w
    return w[np.linspace(0, len(w) - 1, rows).round().astype(int)]


def search_scales(layers: list, importance: np.ndarray, hessian: np.ndarray, grid: int, arrays=NumpyArrays):
    """Best ``(s [K], alpha, errors [grid])`` for the consumers ``layers`` [(w [N, K], settings, dtype)]
    sharing inputs with mean squares ``importance`` [K] and second moments ``hessian`` [K, K], each
    alpha's error computed with ``arrays`` (the calibration engine's ``arrays.for_methods()``)."""
    h32 = arrays.array(hessian)
    rows = [(as_float32(search_rows(w)), settings, dtype) for w, settings, dtype in layers]
    alphas = np.linspace(0.0, 1.0, grid)
    errors = np.array([sum(scaled_error(w, importance, h32, candidate_scales(importance, alpha), settings, dtype,
                                        arrays)
                           for w, settings, dtype in rows) for alpha in alphas])
    best = int(np.argmin(errors))
    return candidate_scales(importance, alphas[best]), float(alphas[best]), errors


class ScaleWriter:
    """Applies a group's scales to a calibration ``engine`` and collects the float parameters that change.

    planned: layers that will be quantized (their scaled float32 weights stay in the engine's dense
    cache to be quantized from); other layers and norms / biases are rounded to their stored dtype
    (``dtypes`` {parameter: numpy dtype}, default the engine's) and written to ``engine.weights``
    and :attr:`updates` {parameter name: array}.
    """

    def __init__(self, engine, planned, dtypes: dict | None = None):
        self.engine, self.planned, self.dtypes, self.updates = engine, set(planned), dtypes or {}, {}

    def store(self, name: str, value: np.ndarray) -> np.ndarray:
        """Round float32 ``value`` to parameter ``name``'s dtype and store it; return it."""
        stored = round_to(value, self.dtypes.get(name, self.engine.weights[name].dtype))
        self.engine.weights[name] = self.updates[name] = stored
        return stored

    def layer(self, name: str, weight: np.ndarray) -> None:
        """New float32 ``weight`` [N, K] for linear ``name``."""
        if name not in self.planned:
            weight = self.store(f"{name}.weight", weight)
        self.engine.set_dense(name, weight)

    def producer(self, group, s: np.ndarray) -> np.ndarray:
        """Divide the producer's output channels by ``s`` [K]; return the scales actually applied
        (a norm's rounding is folded in, so that the transform stays exact)."""
        engine = self.engine
        if group.kind == "norm":
            old = as_float32(engine.weights[f"{group.producer}.weight"])
            new = as_float32(self.store(f"{group.producer}.weight", old / s))
            return np.where((old != 0) & (new != 0), old / np.where(new == 0, 1, new), s).astype(np.float32)
        self.layer(group.producer, engine.dense(group.producer) / s[:, None])
        if f"{group.producer}.bias" in engine.weights:
            self.store(f"{group.producer}.bias", as_float32(engine.weights[f"{group.producer}.bias"]) / s)
        return s

    def consumers(self, group, s: np.ndarray) -> None:
        """Multiply the consumers' input columns by ``s`` [K]."""
        for name in group.consumers:
            self.layer(name, self.engine.dense(name) * s)


def scale_group(writer: ScaleWriter, group, stats, settings: dict, dtypes: dict, grid: int):
    """Search and apply ``group``'s scales; rescale the planned consumers' ``stats``.

    settings / dtypes: per planned layer, {"bits", "group_size"} and its scales' dtype.
    Returns the chosen alpha, or None when no consumer is quantized (nothing to gain).
    """
    planned = [name for name in group.consumers if name in settings and stats.watched(name)]
    if not planned:
        return None
    engine = writer.engine
    importance, hessian = stats.importance(planned[0]), stats.hessian(planned[0])
    layers = [(engine.dense(name), settings[name], dtypes[name]) for name in planned]
    s, alpha, _ = search_scales(layers, importance, hessian, grid, stats.arrays.for_methods())
    if alpha == 0.0:
        return alpha
    s = writer.producer(group, s)
    writer.consumers(group, s)
    stats.rescale(planned, s)
    return alpha
