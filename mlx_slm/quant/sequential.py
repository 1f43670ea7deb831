"""Calibrated quantization of a whole model, one decoder block at a time.

Block i is calibrated on the hidden states that the already-quantized blocks
< i produce, so later blocks see (and compensate for) the earlier blocks'
errors. Only one block's inputs ``[num_samples, seq_len, hidden]`` are held at a
time. Runs on either calibration engine (:mod:`mlx_slm.calib.blocks`): the numpy engine
(:class:`~mlx_slm.models.numpy_llama.NumpyLlama`) or mlx-lm's own blocks on MLX
(:class:`~mlx_slm.calib.mlx_engine.MLXEngine`); the methods' per-layer algorithms run where the
engine's ``arrays.for_methods()`` says (numpy's on a CPU, MLX's on a GPU).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..calib.blocks import arrays_of, calibrate_blocks
from ..calib.statistics import InputStatistics
from ..errors import SLMError
from ..formats import affine, ternary
from ..models.numpy_llama import stored_rows
from .awq import ScaleWriter, check_options, scale_group
from .gptq import gptq_quantize
from .graph import block_groups, head_groups
from .imatrix import weighted_quantize
from .ternary_gptq import gptq_ternary

METHODS = ("imatrix", "gptq", "awq")
SLICE_ELEMENTS = 1 << 24  # weights of the head (or a leftover layer) converted and quantized at a time


TERNARY = ("ternary", "ternary_b3")  # formats chosen as trits and scales (no biases); the rest are affine


def choose_values(method: str, w: np.ndarray, stats: InputStatistics, name: str, settings: dict, dtype,
                  gptq_options: dict):
    """(codes, scales, biases) for one layer; ``stats`` is None for layers with no useful inputs.
    A ternary layer (``settings["format"]``) has codes in {0, 1, 2}, float16 scales and biases None."""
    bits, group_size = settings["bits"], settings["group_size"]
    trits = settings.get("format") in TERNARY
    if stats is None:
        return (*ternary.quantize_values(w, group_size), None) if trits else \
            weighted_quantize(w, None, bits, group_size, dtype)
    arrays = stats.arrays.for_methods()
    if method == "gptq":
        prepared = stats.factor(name, gptq_options.get("damp", 0.01), gptq_options.get("act_order", True))
        if trits:
            return (*gptq_ternary(w, stats.hessian(name), group_size, prepared=prepared, arrays=arrays,
                                  **gptq_options), None)
        return gptq_quantize(w, stats.hessian(name), bits, group_size, dtype, prepared=prepared, arrays=arrays,
                             **gptq_options)
    if trits:
        return (*ternary.quantize_values(w, group_size, stats.importance(name)), None)
    return weighted_quantize(w, stats.importance(name), bits, group_size, dtype, arrays)


def packed_codes(settings: dict, q: np.ndarray) -> np.ndarray:
    """A layer's codes [N, K] as its format stores them: ternary_b3 five trits a byte, the others
    little-endian bit streams of ``bits`` per code (ternary: 2)."""
    if settings.get("format") == "ternary_b3":
        return ternary.pack_base3(q)
    return affine.pack_codes(q, settings["bits"])


def dense_values(settings: dict, q: np.ndarray, scales: np.ndarray, biases) -> np.ndarray:
    """float32 [N, K] the chosen values stand for (what later blocks compute with)."""
    if settings.get("format") in TERNARY:
        return ternary.dequantize_codes(q, scales, settings["group_size"], np.float32)
    return affine.dequantize_codes(q, scales, biases, settings["group_size"], np.float32)


def jointly_quantized(names, method: str, stats: InputStatistics, width, settings: dict, dtypes: dict):
    """``names`` in lists that one call of :func:`choose_values` can quantize as one matrix (their rows
    stacked): with GPTQ, layers that read the same inputs (q/k/v, gate/up) with equal settings, scale
    dtype and width (``width(name)``: K). GPTQ treats rows independently, and one pass over the columns
    for all of them saves per-column work. Other methods: one list each."""
    if method != "gptq" or stats is None:
        return [[name] for name in names]
    batches: dict = {}
    for name in names:
        key = (stats.input_key(name), settings[name]["bits"], settings[name]["group_size"],
               np.dtype(dtypes[name]).str, width(name))
        batches.setdefault(key, []).append(name)
    return list(batches.values())


def row_bounds(rows: int, width: int) -> list[slice]:
    """Slices of at most :data:`SLICE_ELEMENTS` weights (at least one row each) covering ``rows``."""
    step = max(1, SLICE_ELEMENTS // width)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class Choice(NamedTuple):
    """What :func:`sequential_choose` decided.

    results: layer path -> (packed codes, scales, biases: None for ternary) (the layers not handed to
    ``store``).
    float_updates: float parameter name -> new array (AWQ's rescaled norms, biases and float layers).
    scaled: (ScalingGroup, alpha) per group AWQ looked at (alpha None: no consumer is quantized).
    """

    results: dict
    float_updates: dict
    scaled: list


def block_index(name: str) -> int | None:
    """The decoder block of a layer path ``….layers.<i>.…`` (``model.layers.<i>`` in mlx-lm's layout, nested
    deeper in a multimodal model's); None outside the blocks (the embedding, an untied head)."""
    parts = name.split(".")
    index = next((parts[i + 1] for i, part in enumerate(parts[:-1]) if part == "layers"), None)
    return int(index) if index is not None and index.isdigit() else None


def sequential_choose(engine, plan: dict, tokens: np.ndarray, method: str, dtypes: dict,
                      gptq_options: dict | None = None, awq_options: dict | None = None, batch_size: int = 4,
                      progress: bool = True, param_dtypes: dict | None = None, store=None) -> Choice:
    """Choose affine or ternary values for every planned layer of ``engine`` with calibration ``tokens`` [S, T].

    plan: layer path -> {"bits", "group_size"} (and "format": "affine" if absent, or "ternary" /
    "ternary_b3", which "gptq" and "imatrix" choose as trits) or None (kept in float).
    dtypes: layer path -> numpy dtype of its scales/biases.
    Every projection, the output head included, uses ``method`` ("imatrix", "gptq" or
    "awq") on its own inputs; a tied embedding is quantized as the head (on the final
    norm's outputs), an untied input embedding with unweighted imatrix.
    awq_options: grid, quantizer (see :mod:`.awq`); AWQ first rescales each block's scaling
    groups (:mod:`.graph`), then quantizes with the quantizer on the rescaled statistics.
    param_dtypes: float parameter name -> numpy dtype its AWQ update is stored in (default:
    the engine's arrays' dtypes).
    The engine's stored weights are left as they were, except AWQ's float updates, which are
    written to ``engine.weights`` too.
    store: if given, called with each decoder block's results ({path: (packed, scales, biases)}) as
    soon as nothing computes with that block again, then with the head's and the rest's; the
    caller can then free the block's float weights, so a large model's floats and codes are not
    all held at once. The results handed over are not kept in the returned Choice.
    """
    if method not in METHODS:
        raise SLMError(f"calibrated methods are {METHODS}, not {method!r}")
    gptq_options = gptq_options or {}
    awq_settings = check_options(awq_options) if method == "awq" else None
    quantizer = awq_settings["quantizer"] if awq_settings else method
    todo = {path: settings for path, settings in plan.items() if settings is not None}
    results = {}
    writer = ScaleWriter(engine, todo, param_dtypes)
    scaled = []

    def weight(name, rows=slice(None)):  # AWQ's rescaled layers are the engine's float32 ones; the rest as
        if awq_settings and name in engine.dense_names():  # stored, converting only ``rows``
            return engine.dense(name)[rows]
        return stored_rows(engine.weights, f"{name}.weight", rows)

    def quantize_layers(names, stats, layer_method):  # a block's: later blocks compute with their new values
        for batch in jointly_quantized(names, layer_method, stats, lambda name: engine.shape(name)[1], todo, dtypes):
            weights = [weight(name) for name in batch]
            chosen = choose_values(layer_method, np.concatenate(weights) if len(batch) > 1 else weights[0], stats,
                                   batch[0], todo[batch[0]], dtypes[batch[0]], gptq_options)
            row_splits = np.cumsum([len(w) for w in weights])[:-1]
            split = [[None] * len(batch) if array is None else np.split(array, row_splits) for array in chosen]
            for name, q, scales, biases in zip(batch, *split):
                results[name] = (packed_codes(todo[name], q), scales, biases)
                engine.set_dense(name, dense_values(todo[name], q, scales, biases))

    def quantize_last(name, stats, layer_method):  # the head or a leftover: nothing computes with it here
        parts = []  # again, so a slice of rows at a time is converted, chosen and packed
        for rows in row_bounds(*engine.shape(name)):
            q, scales, biases = choose_values(layer_method, weight(name, rows), stats, name, todo[name],
                                              dtypes[name], gptq_options)
            parts.append((packed_codes(todo[name], q), scales, biases))
        results[name] = tuple(None if arrays[0] is None else np.concatenate(arrays) for arrays in zip(*parts))
        engine.drop_cache([name])

    def rescale(groups, stats):
        for group in groups:
            scaled.append((group, scale_group(writer, group, stats, todo, dtypes, awq_settings["grid"])))

    def update(names, stats):
        if awq_settings:
            rescale(block_groups(engine, block_index(names[0])), stats)
        quantize_layers(names, stats, quantizer)

    handed = set()

    def hand_over(names):
        if store is not None:
            ready = {name: results.pop(name) for name in names if name in results}
            handed.update(ready)
            store(ready)

    gram = quantizer == "gptq" or method == "awq"
    h = calibrate_blocks(engine, todo, tokens, gram, update, f"{method} blocks", batch_size, progress, done=hand_over)

    head = engine.head_name
    if head in todo:
        stats = InputStatistics([head], gram, arrays_of(engine))
        for i in range(0, len(h), batch_size):
            stats(head, engine.head_input(h[i : i + batch_size]))
        stats.release()
        if awq_settings:
            rescale(head_groups(engine), stats)
        quantize_last(head, stats, quantizer)
    for name in sorted(set(todo) - set(results) - handed):
        quantize_last(name, None, "imatrix")
    hand_over(list(results))
    return Choice(results, writer.updates, scaled)


def sequential_quantize(engine, plan: dict, tokens: np.ndarray, method: str, dtypes: dict,
                        gptq_options: dict | None = None, batch_size: int = 4, progress: bool = True) -> dict:
    """:func:`sequential_choose` with "imatrix" or "gptq" (which change no float parameter):
    returns only its ``results``, layer path -> (packed uint32, scales, biases)."""
    if method == "awq":
        raise SLMError("method 'awq' changes float parameters too: use sequential_choose")
    return sequential_choose(engine, plan, tokens, method, dtypes, gptq_options, None, batch_size, progress).results
