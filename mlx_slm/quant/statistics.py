"""Input statistics of linear layers, gathered by observing the numpy forward pass."""

from __future__ import annotations

import numpy as np


class InputStatistics:
    """Observer for :meth:`NumpyLlama.linear`: per watched layer, over every input token x [K],
    the sum of x**2 per column and (with ``gram=True``) the sum of x x^T.

    Layers that share one input array (q/k/v, gate/up) share its computation.
    """

    def __init__(self, names, gram: bool):
        self.names = set(names)
        self.gram = gram
        self.tokens: dict[str, int] = {}
        self.squares: dict[str, np.ndarray] = {}
        self.products: dict[str, np.ndarray] = {}
        self.inputs_seen: dict[str, list[int]] = {}  # per layer, the serial numbers of the inputs it saw
        self._serial = 0
        self._last = None  # (input array, token count, squares, products) of the last input seen

    def __call__(self, name: str, x: np.ndarray) -> None:
        if name not in self.names:
            return
        if self._last is None or self._last[0] is not x:
            flat = x.reshape(-1, x.shape[-1])
            products = (flat.T @ flat).astype(np.float64) if self.gram else None
            squares = np.diag(products).copy() if self.gram else np.einsum("tk,tk->k", flat, flat, dtype=np.float64)
            self._last = (x, flat.shape[0], squares, products)
            self._serial += 1
        self.inputs_seen.setdefault(name, []).append(self._serial)
        _, count, squares, products = self._last
        self.tokens[name] = self.tokens.get(name, 0) + count
        self.squares[name] = self.squares.get(name, 0) + squares
        if products is not None:
            self.products[name] = self.products.get(name, 0) + products

    def input_key(self, name: str) -> tuple:
        """Equal for layers that saw the very same inputs (and so have equal statistics)."""
        return tuple(self.inputs_seen[name])

    def importance(self, name: str) -> np.ndarray:
        """Mean squared activation per input column [K] (llama.cpp's importance matrix)."""
        return self.squares[name] / self.tokens[name]

    def hessian(self, name: str) -> np.ndarray:
        """Second moments E[x x^T] [K, K] float64 (needs ``gram=True``)."""
        return self.products[name] / self.tokens[name]

    def release(self) -> None:
        self._last = None
