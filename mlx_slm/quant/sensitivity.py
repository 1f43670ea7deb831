"""How much each layer's quantization costs the model: measured once, predicted for every setting.

For calibration tokens ``[S, T]`` the float model's block inputs and final log-probabilities
are cached. Each candidate layer is then quantized ALONE at a probe setting (RTN, affine),
the model is rerun from that layer's block to the logits, and the mean per-token
KL(float || probed) is its measured sensitivity. The loss of any other setting ``o`` is
predicted from the layer's output error energy ``E(o) = tr(dW H dW^T)`` (``H``: second
moments of the layer's inputs on the same tokens)::

    dKL(o) ~= dKL(probe) * E(o) / E(probe)

(KL grows with the square of a small logit change, which is linear in ``dW``; the energy
carries that square through the layer's own inputs). A tied embedding has two roles, the
input lookup and the output head; each is probed and predicted on its own and the two add.

The passes run on the calibration engine :func:`~mlx_slm.model_access.choose_engine` picks (the
calibrated methods' engine): the numpy engine for a numpy model and, on a CPU, by default for the
Llama family; otherwise :class:`~mlx_slm.calib.mlx_engine.MLXEngine`, mlx-lm's own blocks, so every
architecture mlx-lm runs. Hidden states stay the engine's arrays; logits and each layer's inputs
come back as numpy, where the KL, input factors and error energies are computed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..errors import SLMError
from ..evaluate import log_softmax
from ..formats import affine
from ..formats.dtypes import as_float32
from ..model_access import access, weight_dtypes
from ..progress import hidden
from .sequential import block_index

PROBE = {"bits": 3, "group_size": 64}
ENERGY_ROWS = 512  # output rows (evenly spaced) on which each setting's error energy is measured


@dataclass
class LayerSensitivity:
    """One candidate layer: its affine settings, measured probe loss and error energies."""

    path: str
    shape: tuple
    dtype_bits: int
    options: list  # [{"bits", "group_size"}] that fit the shape, cheapest first
    unavailable: dict  # "group 128" -> why it does not fit
    probe: int = -1  # index into options of the probe setting (-1: no option fits)
    probe_kld: dict = field(default_factory=dict)  # role ("block" / "head" / "embedding") -> dKL
    energy: dict = field(default_factory=dict)  # role -> [len(options)] error energies

    def option_bits(self) -> np.ndarray:
        """Stored bits [len(options)] of the layer at each setting (codes + scales + biases)."""
        rows, width = self.shape
        return np.array([rows * width * o["bits"] + 2 * rows * (width // o["group_size"]) * self.dtype_bits
                         for o in self.options], np.int64)

    def predicted_kld(self) -> np.ndarray:
        """Predicted dKL [len(options)]: each role's probe dKL scaled by its energy ratio."""
        total = np.zeros(len(self.options))
        for role, kld in self.probe_kld.items():
            energy = self.energy[role]
            total += kld * energy / max(energy[self.probe], 1e-30)
        return total


@dataclass
class Sensitivity:
    """Every candidate layer's sensitivity plus the model's other (fixed, float) matrices."""

    layers: dict  # path -> LayerSensitivity
    matrix_weights: int  # weights of all 2-D matrices (weight_stats' denominator)
    fixed_bits: int  # stored bits of 2-D matrices that are not candidates
    tokens: tuple  # (S, T) calibration windows
    seconds: float
    engine: str  # the calibration engine that ran the passes: "numpy" or "mlx"


def layer_options(shape: tuple) -> tuple[list, dict]:
    """Affine settings that fit a weight of ``shape`` [N, K], cheapest first, and the group sizes
    that do not fit with the reason."""
    unavailable = {}
    for group_size in affine.GROUP_SIZES:
        reason = affine.misfit(shape, affine.BITS[0], group_size)
        if reason:
            unavailable[f"group {group_size}"] = reason
    options = [{"bits": b, "group_size": g} for b in affine.BITS for g in affine.GROUP_SIZES
               if f"group {g}" not in unavailable]
    options.sort(key=lambda o: o["bits"] + 32 / o["group_size"])
    return options, unavailable


def probe_index(options: list, probe: dict) -> int:
    """The option used as the probe: ``probe`` itself, else its bits with the largest fitting group."""
    same_bits = [i for i, o in enumerate(options) if o["bits"] == probe["bits"]]
    if not same_bits:
        raise SLMError(f"probe bits must be one of {affine.BITS}, not {probe['bits']}")
    exact = [i for i in same_bits if options[i]["group_size"] == probe["group_size"]]
    return exact[0] if exact else max(same_bits, key=lambda i: options[i]["group_size"])


def rtn_dense(w: np.ndarray, settings: dict) -> np.ndarray:
    """float32 [N, K] of ``w`` [N, K] after RTN affine quantization at ``settings``."""
    group_size = settings["group_size"]
    return affine.dequantize_codes(*affine.quantize_codes(w, settings["bits"], group_size), group_size,
                                   dtype=np.float32)


def input_factor(x: np.ndarray) -> np.ndarray:
    """F [K, r] with F F^T = x^T x / n for inputs x [n, K] (r = min(n, K))."""
    x = as_float32(x).reshape(-1, x.shape[-1])
    if len(x) <= x.shape[1]:
        return x.T / np.float32(np.sqrt(len(x)))
    values, vectors = np.linalg.eigh(x.T.astype(np.float64) @ x / len(x))
    return (vectors * np.sqrt(np.maximum(values, 0))).astype(np.float32)


def error_energies(w: np.ndarray, options: list, factor: np.ndarray | None,
                   row_weights: np.ndarray | None = None) -> np.ndarray:
    """sum_i r_i ||(Q_o(w) - w)_i F||^2 for each option o: w [n, K] rows, F [K, r] (None: identity),
    row weights r [n] (None: ones). Returns [len(options)] float64."""
    w32 = as_float32(w)
    out = np.empty(len(options))
    for i, settings in enumerate(options):
        delta = rtn_dense(w, settings) - w32
        projected = delta if factor is None else delta @ factor
        per_row = np.einsum("nr,nr->n", projected, projected, dtype=np.float64)
        out[i] = per_row.sum() if row_weights is None else per_row @ row_weights
    return out


def sampled_rows(count: int) -> np.ndarray:
    """At most :data:`ENERGY_ROWS` evenly spaced row indices of ``count`` rows."""
    return np.unique(np.linspace(0, count - 1, min(count, ENERGY_ROWS)).round().astype(int))


class InputCapture:
    """Observer keeping every watched projection's input ``x`` [..., K] (one array per call)."""

    def __init__(self):
        self.inputs: dict[str, list] = {}

    def __call__(self, name: str, x) -> None:
        """Keep ``x`` [..., K] (numpy, or the MLX engine's float32 array, converted) as rows [n, K]."""
        x = np.asarray(x, np.float32)
        self.inputs.setdefault(name, []).append(x.reshape(-1, x.shape[-1]))

    def factor(self, name: str) -> np.ndarray:
        return input_factor(np.concatenate(self.inputs[name]))


def mean_kld(ref_probs: np.ndarray, ref_logprobs: np.ndarray, logits: np.ndarray) -> float:
    """Mean per-token KL(ref || model): ref [S, T, V] probabilities and log-probabilities, logits [S, T, V]."""
    return float(np.einsum("stv,stv->st", ref_probs, ref_logprobs - log_softmax(logits)).mean())


class FloatRun:
    """The float model's block inputs [L + 1] x [S, T, D] (the engine's arrays), reference distribution
    (numpy [S, T, V]) and layer inputs."""

    def __init__(self, engine, tokens: np.ndarray):
        self.engine, self.tokens = engine, tokens
        capture = InputCapture()
        engine.observer = capture
        try:
            self.hidden = [engine.embed(tokens)]
            for layer in range(engine.num_layers):
                self.hidden.append(engine.block(layer, self.hidden[-1]))
            self.ref_logprobs = log_softmax(engine.head(self.hidden[-1]))
        finally:
            engine.observer = None
        self.ref_probs = np.exp(self.ref_logprobs)
        self.capture = capture

    def kld_from(self, layer: int, h) -> float:
        """dKL when blocks ``layer``.. run on ``h`` [S, T, D] with the engine's current weights."""
        for index in range(layer, self.engine.num_layers):
            h = self.engine.block(index, h)
        return mean_kld(self.ref_probs, self.ref_logprobs, self.engine.head(h))


def roles_of(engine, path: str) -> list[str]:
    """What the layer does: "block" (a projection in a decoder block), "embedding", "head"."""
    if block_index(path) is not None:
        return ["block"]
    roles = (["embedding"] if path == "model.embed_tokens" else []) + (["head"] if path == engine.head_name else [])
    if not roles:
        raise SLMError(f"cannot measure the sensitivity of layer {path}: it is neither in a decoder block, "
                       "the embedding nor the output head")
    return roles


def probed_kld(run: FloatRun, role: str, path: str, probed: np.ndarray) -> float:
    """dKL when layer ``path`` computes with ``probed`` [N, K] in its ``role`` only."""
    engine = run.engine
    engine.set_dense(path, probed)
    try:
        if role == "head":
            return mean_kld(run.ref_probs, run.ref_logprobs, engine.head(run.hidden[-1]))
        if role == "block":
            block = block_index(path)
            return run.kld_from(block, run.hidden[block])
        h = engine.embed(run.tokens)
    finally:
        engine.drop_cache([path])
    return run.kld_from(0, h)  # the lookup only: a tied head computes in float


def probe_layer(run: FloatRun, layer: LayerSensitivity, w: np.ndarray) -> None:
    """Measure ``layer``'s probe dKL and error energies per role; ``w`` [N, K] its float weight."""
    probed = rtn_dense(w, layer.options[layer.probe])
    for role in roles_of(run.engine, layer.path):
        layer.probe_kld[role] = probed_kld(run, role, layer.path, probed)
        if role == "embedding":
            ids, counts = np.unique(run.tokens, return_counts=True)
            layer.energy[role] = error_energies(w[ids], layer.options, None, counts / counts.sum())
        else:
            layer.energy[role] = error_energies(w[sampled_rows(len(w))], layer.options,
                                                run.capture.factor(layer.path))


def matrix_totals(model, candidates) -> tuple[int, int]:
    """(weights of every 2-D matrix, stored bits of the matrices that are not ``candidates``),
    counted as :func:`mlx_slm.stats.weight_stats` counts them."""
    weights = fixed = 0
    for name, array in access(model).arrays().items():
        if name.endswith(".weight") and len(array.shape) == 2:
            weights += int(np.prod(array.shape))
            if name[: -len(".weight")] not in candidates:
                fixed += 8 * int(array.nbytes)
    return weights, fixed


def measure_sensitivity(model, tokens: np.ndarray, probe: dict | None = None, progress: bool = True,
                        cpu_engine: str | None = None) -> Sensitivity:
    """Sensitivity of every float 2-D layer of ``model`` on calibration ``tokens`` [S, T].

    probe: the setting each layer is measured at (default :data:`PROBE`, 3 bits / group 64;
    a layer where that group does not fit uses the same bits with its largest fitting group).
    cpu_engine: on a CPU, the calibration engine to prefer ("numpy" or "mlx"; None:
    :func:`~mlx_slm.model_access.choose_engine`'s default).
    Cost: one float pass, then per layer a rerun from its block to the logits.
    Memory: about 3 * S * T * vocab float32 for the reference distribution.
    """

    start = time.perf_counter()
    tokens = np.asarray(tokens, np.int64)
    if tokens.ndim != 2 or tokens.size == 0:
        raise SLMError(f"calibration tokens must be a non-empty [samples, seq_len] array, not shape {tokens.shape}")
    view = access(model)
    shapes = view.candidate_layers()
    if not shapes:
        raise SLMError("the model has no float layers to quantize")
    dtypes = weight_dtypes(model, shapes)
    engine = view.calibration_engine(cpu_engine)
    layers = {}
    for path, shape in sorted(shapes.items(), key=lambda item: (block_index(item[0]) is None, item[0])):
        options, unavailable = layer_options(tuple(shape))
        layers[path] = LayerSensitivity(path, tuple(shape), 8 * dtypes[path].itemsize, options, unavailable)
        if options:
            layers[path].probe = probe_index(options, probe or PROBE)
    run = FloatRun(engine, tokens)
    for layer in tqdm([s for s in layers.values() if s.options], desc="sensitivity", disable=hidden(progress)):
        probe_layer(run, layer, engine.weights[f"{layer.path}.weight"].astype(dtypes[layer.path], copy=False))
    weights, fixed = matrix_totals(model, {p for p, s in layers.items() if s.options})
    return Sensitivity(layers, weights, fixed, tokens.shape, time.perf_counter() - start, engine.backend)
