"""A model's matrices as plain numpy, per layer: float, affine codes + scales + biases, or
palettized codes + tables (the ``lut`` and ``ternary`` formats).

This is the one place the exporters read a model (MLX or numpy backend); they
never re-quantize; :class:`ModelWeights` converts one tensor at a time, when it is read.
Names are mlx-lm's (``model.layers.0.self_attn.q_proj``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from ..formats import get_format
from ..formats.base import cut_rows, row_share
from ..io import safetensors_np
from ..model_access import access, model_config
from ..qconfig import saved_layer_params


def is_packed(array) -> bool:
    """True for the integer code arrays of quantized layers (MLX or numpy)."""
    return str(array.dtype).rsplit(".", 1)[-1].startswith(("uint", "int"))


def to_numpy(array) -> np.ndarray:
    """numpy copy of an MLX or numpy array; bfloat16 becomes float32 (exactly)."""
    if isinstance(array, np.ndarray):
        return array
    from ..runtime import widened

    return widened(array)


def converted(array) -> np.ndarray:
    """:func:`to_numpy`, never a view of a memory-mapped file: a mapped tensor (the numpy backend's)
    is copied and its pages released, so reading each tensor once leaves none of the model's file
    in memory beside what the reader builds."""
    out = to_numpy(array)
    if safetensors_np.mapping(out)[0] is not None:
        out = out.copy()
        safetensors_np.release(array)
    return out


SLICE_WEIGHTS = 1 << 22  # weights per slice of rows converted at once (16 MiB in float32)


def take(array, rows: np.ndarray):
    """Rows ``rows`` (an index array) of an MLX or numpy array, only those converted or copied."""
    if isinstance(array, np.ndarray):
        return array[rows]
    import mlx.core as mx

    return array[mx.array(rows)]


def row_slices(order: np.ndarray, shape: tuple, group: int = 1) -> list[np.ndarray]:
    """``order`` cut into runs of at most :data:`SLICE_WEIGHTS` weights: whole rows, a multiple of
    ``group`` rows each (at least one group)."""
    step = max(1, SLICE_WEIGHTS // math.prod(shape[1:]) // group) * group
    return [order[start:start + step] for start in range(0, len(order), step)]


def fill(whole, part, start: int, count: int):
    """Copy the view ``part`` (rows ``start`` .. of a layer of ``count`` rows) into ``whole`` (None: made
    now, its arrays sized for ``count`` rows); returns ``whole``. Arrays split along their first axis in
    proportion to the rows (palettes shared by g rows: a slice's rows / g of them); ``stored_bytes`` adds up."""
    arrays = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)
              if isinstance(getattr(part, f.name), np.ndarray)}
    rows = part.shape[0]
    if whole is None:
        whole = dataclasses.replace(part, stored_bytes=0, **{
            name: np.empty((a.shape[0] * count // rows, *a.shape[1:]), a.dtype) for name, a in arrays.items()})
    for name, a in arrays.items():
        first = start * a.shape[0] // rows
        getattr(whole, name)[first:first + a.shape[0]] = a
    whole.stored_bytes += part.stored_bytes
    return whole


class ModelWeights(Mapping):
    """Layer path or tensor name -> :class:`AffineWeight`, :class:`PalettizedWeight` or numpy array,
    converted when read and not kept, so an exporter holds one tensor's numpy copy at a time.

    Quantized layers appear once under their path (``...q_proj``); every other tensor keeps its full
    name (``...q_proj.weight``, ``model.norm.weight``). :meth:`shape` and :meth:`quantized` answer from
    the stored arrays without converting them.
    """

    def __init__(self, model, prefix: str = ""):
        """``prefix``: what the keys lose (a multimodal model's ``language_model.``)."""
        quantization = model_config(model).get("quantization") or {}
        self.arrays = access(model).arrays()
        self.layers = {}  # key -> (mode, bits, group_size) of a quantized layer, None for a float tensor
        self.names = {}  # key -> the model's own name (a float tensor) or layer path (a quantized layer)
        for name in self.arrays:
            path, _, suffix = name.rpartition(".")
            packed = self.arrays.get(f"{path}.weight")
            if packed is None or not is_packed(packed):
                self.add(name.removeprefix(prefix), name, None)  # float tensors
                continue
            bits, group_size, mode = saved_layer_params(quantization, path)
            if suffix not in get_format(mode).stored:
                self.add(name.removeprefix(prefix), name, None)  # a quantized layer's own bias
            elif suffix == "weight":
                self.add(path.removeprefix(prefix), path, (mode, bits, group_size))

    def add(self, key: str, name: str, settings) -> None:
        self.layers[key], self.names[key] = settings, name

    def __getitem__(self, key: str):
        """The tensor converted now; a quantized layer's view is filled slice of rows by slice (a whole
        number of palette groups each), so unpacking its codes needs temporaries of one slice only."""
        if self.layers[key] is None:
            return converted(self.arrays[self.names[key]])
        mode, bits, group_size = self.layers[key]
        stored, shape = self.stored(key), self.shape(key)
        slices = row_slices(np.arange(shape[0]), shape, row_share(shape[0], stored.values()))
        whole = None
        for index in slices:
            start, stop = int(index[0]), int(index[-1]) + 1
            part = {s: None if a is None else converted(cut_rows(a, shape[0], start, stop)) for s, a in stored.items()}
            view = get_format(mode).view(part, bits, group_size)
            if len(slices) == 1:
                return view
            whole = fill(whole, view, start, shape[0])
        return whole

    def rows(self, key: str, index: np.ndarray):
        """``self[key]`` of the rows ``index`` only (in that order), converting only those: of a stored
        array of N rows its rows ``index``; of one of N / g rows (palettes shared by g rows) the rows
        ``index // g``, so the view gets one palette per row and says so (group size 1)."""
        if self.layers[key] is None:
            rows = to_numpy(take(self.arrays[self.names[key]], index))
            safetensors_np.release(self.arrays[self.names[key]])
            return rows
        mode, bits, group_size = self.layers[key]
        count = self.shape(key)[0]
        stored = self.stored(key)
        shares = {s: count // a.shape[0] for s, a in stored.items() if a is not None}
        rows = {s: None if a is None else to_numpy(take(a, index // shares[s])) for s, a in stored.items()}
        for array in stored.values():
            if array is not None:
                safetensors_np.release(array)
        return get_format(mode).view(rows, bits, 1 if max(shares.values()) > 1 else group_size)

    def __contains__(self, key) -> bool:
        return key in self.layers

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def stored(self, path: str) -> dict:
        """A quantized layer's stored arrays as the model holds them (suffix -> array or None)."""
        mode = self.layers[path][0]
        return {s: self.arrays.get(f"{self.names[path]}.{s}") for s in get_format(mode).stored}

    def quantized(self, key: str) -> bool:
        return self.layers[key] is not None

    def shape(self, key: str) -> tuple:
        """The shape of ``self[key]`` (a quantized layer's [N, K]), read from the stored arrays."""
        if self.layers[key] is None:
            return tuple(self.arrays[self.names[key]].shape)
        mode, bits, group_size = self.layers[key]
        return tuple(get_format(mode).layer_shape(self.stored(key), bits, group_size))


def matrix(weights: dict, path: str):
    """The layer ``path``'s matrix: an :class:`AffineWeight`, a :class:`PalettizedWeight` or a float array [N, K]."""
    if path in weights:
        return weights[path]
    return weights[f"{path}.weight"]
