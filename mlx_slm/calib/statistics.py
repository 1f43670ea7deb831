"""Input statistics of linear layers, gathered by observing an engine's forward pass.

The sums are taken with the engine's own array library (:class:`NumpyArrays` here; MLX's in
:mod:`.mlx_engine`) and handed to the methods as numpy arrays once a block's pass is over
(:meth:`InputStatistics.release`). The per-layer algorithms (the column sweeps of GPTQ and
SparseGPT, Wanda's scores, imatrix's grid search, the refit's products with H, AWQ's error per
alpha) are written once over these array operations and run on the library
:meth:`NumpyArrays.for_methods` names; what stays numpy code is the Hessian's factor, the refit's
float64 solves and the bookkeeping around them.
"""

from __future__ import annotations

import numpy as np

from ..errors import SLMError
from ..formats import affine
from ..formats.dtypes import as_float32, round_to
from .hessian import prepare_hessian


class NumpyArrays:
    """The numpy engine's array operations: how its inputs are summed (:class:`InputStatistics`)
    and what the per-layer algorithms compute with (:mod:`mlx_slm.quant.gptq`, :mod:`mlx_slm.quant.imatrix`,
    :mod:`mlx_slm.quant.refit`, :mod:`mlx_slm.quant.awq`, :mod:`mlx_slm.prune.sparsegpt`,
    :mod:`mlx_slm.prune.wanda`; MLX's :class:`~.mlx_engine.MLXArrays` has the same names). Where an
    operation's result may overwrite its first argument, numpy's does so in place (the algorithms
    hand it temporaries), MLX's returns a new array."""

    in_cache_slices = True  # element-wise passes run on cache-sized row slices, one thread per core

    @staticmethod
    def moments(x: np.ndarray, gram: bool):
        """(token count, sum of x**2 per column float64 [K], sum of x x^T float32 [K, K] or None) of
        inputs ``x`` [..., K]."""
        flat = x.reshape(-1, x.shape[-1])
        products = flat.T @ flat if gram else None
        squares = (np.diag(products).astype(np.float64) if gram
                   else np.einsum("tk,tk->k", flat, flat, dtype=np.float64))
        return flat.shape[0], squares, products

    @staticmethod
    def add(total: np.ndarray, more: np.ndarray) -> np.ndarray:
        """``total + more``, in place."""
        total += more
        return total

    concatenate = staticmethod(np.concatenate)

    @staticmethod
    def numpy(array, dtype) -> np.ndarray:
        """``array`` as numpy ``dtype`` (no copy when it already is)."""
        return np.asarray(array, dtype)

    @staticmethod
    def for_methods():
        """The array operations the per-layer algorithms run on for this engine: numpy's."""
        return NumpyArrays

    @staticmethod
    def array(x: np.ndarray) -> np.ndarray:
        """Numpy ``x`` as a float32 array of this library: ``x`` itself if it already is float32, in its
        layout (a sweep updates the columns it gets from here in place on numpy, and MLX's copy
        functionally; a matrix product's float32 rounding depends on the layout)."""
        return np.asarray(x, np.float32)

    where = staticmethod(np.where)
    square = staticmethod(np.square)
    abs = staticmethod(np.abs)
    maximum = staticmethod(np.maximum)
    stack = staticmethod(np.stack)

    wide = np.float64  # a scalar of the widest float: with it numpy computes in float64 (MLX: float32)

    @staticmethod
    def round_clip(x: np.ndarray, top: int) -> np.ndarray:
        """``x`` rounded to the nearest integer (ties to even) and clipped to [0, top], in place."""
        return np.clip(np.rint(x, out=x), 0, top, out=x)

    @staticmethod
    def put_where(target: np.ndarray, mask: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``target`` with ``values`` where ``mask`` (broadcast), in place."""
        np.copyto(target, values, where=mask)
        return target

    @staticmethod
    def sums64(x: np.ndarray) -> np.ndarray:
        """Sums over the last axis as numpy float64 (taken in float64)."""
        return x.sum(-1, dtype=np.float64)

    @staticmethod
    def row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """sum(a * b) over the last axis of equally shaped ``a``, ``b``."""
        return np.einsum("...j,...j->...", a, b)

    @staticmethod
    def any(mask: np.ndarray) -> bool:
        return bool(mask.any())

    @staticmethod
    def total(x: np.ndarray) -> float:
        """Sum of all of ``x`` (numpy's pairwise float32 sum for float32 ``x``)."""
        return float(np.sum(x))

    @staticmethod
    def rounded(x, dtype) -> np.ndarray:
        """Float ``x`` rounded to float32, then to numpy ``dtype`` (float16, bfloat16 or float32), held as float32."""
        return as_float32(round_to(x, dtype))

    @staticmethod
    def affine_codes(groups: np.ndarray, bits: int, dtype):
        """MLX's own round-to-nearest choice (:func:`~mlx_slm.formats.affine.quantize_codes`) for weight
        groups float32 [N, G, g] stored in ``dtype``: codes float32 [N, G, g] and scales, biases
        [N, G] as :meth:`rounded` values."""
        q, scales, biases = affine.quantize_codes(groups.reshape(len(groups), -1).astype(dtype, copy=False), bits,
                                                  groups.shape[-1])
        return q.reshape(groups.shape).astype(np.float32), as_float32(scales), as_float32(biases)

    @staticmethod
    def ranks(scores: np.ndarray) -> np.ndarray:
        """Rank of each score along the last axis (0 = smallest; ties by index)."""
        order = np.argsort(scores, axis=-1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.broadcast_to(np.arange(scores.shape[-1]), scores.shape), axis=-1)
        return ranks

    @staticmethod
    def evaluate(*arrays) -> None:
        """Start computing ``arrays`` (MLX is lazy; numpy has computed them already)."""


class RunningSums:
    """Sums over the input tokens x [K] of one or more layers that saw the very same inputs:
    the token count, x**2 per column (float64 [K]) and, with a Gram matrix, x x^T (float32
    [K, K], updated in place: a 14336-wide input's is 0.8 GB, so it is kept once, in float32)."""

    def __init__(self, arrays):
        self.arrays = arrays  # NumpyArrays or the MLX engine's
        self.serials: list[int] = []  # the inputs added, in order
        self.count = 0
        self.squares = None
        self.products = None
        self.normalized = False  # products divided by count (see InputStatistics.hessian)
        self.factors = {}  # (damp, act_order) -> prepare_hessian's result

    def add(self, serial: int, count: int, squares: np.ndarray, products) -> None:
        self.serials.append(serial)
        self.count += count
        if self.squares is None:  # no other sums start with this input: its arrays can be kept as they are
            self.squares, self.products = squares, products
            return
        self.squares = self.arrays.add(self.squares, squares)
        if products is not None:
            self.products = self.arrays.add(self.products, products)

    def to_numpy(self) -> None:
        """Hold the sums as numpy arrays (squares float64, products float32)."""
        self.squares = self.arrays.numpy(self.squares, np.float64)
        if self.products is not None:
            self.products = self.arrays.numpy(self.products, np.float32)


class InputStatistics:
    """Observer of an engine's linear layers (``engine.observer``: called with each layer's name and
    input x [..., K]): per watched layer, over every input token x [K], the sum of x**2 per column
    and (with ``gram=True``) the sum of x x^T, taken with ``arrays`` (the engine's array operations,
    default numpy). Read them after :meth:`release`.

    Layers that share one input array (q/k/v, gate/up) share its computation and one
    :class:`RunningSums`.
    """

    def __init__(self, names, gram: bool, arrays=NumpyArrays):
        self.names = set(names)
        self.gram = gram
        self.arrays = arrays
        self.sums: dict[str, RunningSums] = {}
        self.inputs_seen: dict[str, list[int]] = {}  # per layer, the serial numbers of the inputs it saw
        self._serial = 0
        self._last = None  # (input array, token count, squares, products, sums it started) of the last input

    def __call__(self, name: str, x: np.ndarray) -> None:
        if name not in self.names:
            return
        if self._last is None or self._last[0] is not x:
            self._serial += 1
            self._last = (x, *self.arrays.moments(x, self.gram), None)
        seen = self.inputs_seen.setdefault(name, [])
        seen.append(self._serial)
        sums = self.sums.get(name)
        if sums is None:  # the layer's first input: share the sums of a layer whose first it was too
            sums = self._last[4] or RunningSums(self.arrays)
            self._last = self._last[:4] + (sums,)
            self.sums[name] = sums
        if sums.serials == seen[:-1]:
            sums.add(self._serial, *self._last[1:4])
        elif sums.serials != seen:
            raise SLMError(f"input statistics: {name} no longer sees the inputs of the layers it shared them with")

    def input_key(self, name: str) -> tuple:
        """Equal for layers that saw the very same inputs (and so have equal statistics)."""
        return tuple(self.inputs_seen[name])

    def watched(self, name: str) -> bool:
        """True once layer ``name`` has seen an input."""
        return name in self.sums

    def importance(self, name: str) -> np.ndarray:
        """Mean squared activation per input column [K] (llama.cpp's importance matrix)."""
        sums = self.sums[name]
        return sums.squares / sums.count

    def hessian(self, name: str) -> np.ndarray:
        """Second moments E[x x^T] [K, K] float32 (needs ``gram=True``). The first call turns the
        running sum into this mean in place (no copy), so no input is added afterwards."""
        sums = self.sums[name]
        if not sums.normalized:
            sums.products /= np.float32(sums.count)
            sums.normalized = True
        return sums.products

    def factor(self, name: str, damp: float, act_order: bool):
        """:func:`~.hessian.prepare_hessian` of layer ``name``'s Hessian, ``(order [K], U [K, K])``, computed
        once for the layers sharing that input (so a block holds one Hessian and one factor per input)."""
        sums = self.sums[name]
        if (damp, act_order) not in sums.factors:
            sums.factors[damp, act_order] = prepare_hessian(self.hessian(name), damp, act_order)
        return sums.factors[damp, act_order]

    def rescale(self, names, s: np.ndarray) -> None:
        """Inputs of ``names`` became x / s [K]: importance / s^2 and H -> S^-1 H S^-1, each shared
        sum rescaled once, in place (factors computed before are dropped)."""
        inverse = 1.0 / np.asarray(s, np.float64)
        for sums in {id(self.sums[name]): self.sums[name] for name in names}.values():
            sums.factors.clear()
            sums.squares *= np.square(inverse)
            if sums.products is not None:
                inverse32 = inverse.astype(np.float32)
                sums.products *= inverse32[:, None]
                sums.products *= inverse32[None, :]

    def release(self) -> None:
        """End of the pass: forget the last input and hold every sum as numpy arrays."""
        self._last = None
        for sums in {id(sums): sums for sums in self.sums.values()}.values():
            sums.to_numpy()
