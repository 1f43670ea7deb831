"""Weighted one-dimensional k-means, for many small problems at once (the lut format's palettes).

Each row of ``values`` [G, M] is its own problem. In one dimension a cluster is a
run of sorted values, so after one sort per row every Lloyd step needs only
cumulative sums and a binary search of the k-1 midpoints: the sort dominates the
cost. Deterministic, from three starts whose best result each row keeps: the
quantiles of the cube root of the (weighted) density -- the point density of an
optimal high-resolution quantizer (Panter & Dite), which avoids the poor local
minima that plain quantiles reach on heavy-tailed weights --, the plain weighted
quantiles (best on values that take few distinct levels) and an even grid; each
runs Lloyd steps until no boundary moves (at most ``iters``).
"""

from __future__ import annotations

import numpy as np

CHUNK_VALUES = 1 << 22  # values per batch of rows: bounds the float64 work arrays (~100 MB)


class RowSearch:
    """Binary search in every row of ``rows`` [G, M] (each sorted ascending) at once: the rows are
    shifted apart into one increasing float64 array, built once for many searches."""

    def __init__(self, rows: np.ndarray):
        self.count, self.width = rows.shape
        self.low = rows.min()
        self.offsets = np.arange(self.count, dtype=np.float64)[:, None] * (rows.max() - self.low + 1.0)
        self.flat = (rows - self.low + self.offsets).ravel()
        self.starts = np.arange(self.count)[:, None] * self.width

    def count_below(self, queries: np.ndarray) -> np.ndarray:
        """Per row, how many entries are < ``queries`` [G, q] (queries within the row's range)."""
        shifted = np.clip(queries - self.low, 0, None) + self.offsets
        found = np.searchsorted(self.flat, shifted.ravel(), side="left").reshape(queries.shape)
        return np.clip(found - self.starts, 0, self.width)


def companding_init(x: np.ndarray, cum_w: np.ndarray, k: int) -> np.ndarray:
    """Quantiles of (weighted density)**(1/3) [G, k]: x [G, M] sorted, cum_w [G, M+1] its cumulative weights."""
    count, width = x.shape
    reach = max(1, width // 64)  # density from the spread of 2*reach neighbours
    index = np.arange(width)
    low, high = np.maximum(index - reach, 0), np.minimum(index + reach, width - 1)
    spread = x[:, high] - x[:, low]
    density = (cum_w[:, high + 1] - cum_w[:, low]) / np.where(spread > 0, spread, np.inf)
    companded = np.cbrt((density[:, 1:] + density[:, :-1]) / 2) * np.diff(x, axis=1)
    cumulative = np.concatenate([np.zeros((count, 1)), np.cumsum(companded, axis=1)], axis=1)
    targets = (np.arange(k) + 0.5) / k * cumulative[:, -1:]
    start = np.minimum(RowSearch(cumulative).count_below(targets), width - 1)
    return np.take_along_axis(x, start, axis=1)


def quantile_init(x: np.ndarray, cum_w: np.ndarray, k: int) -> np.ndarray:
    """Weighted quantiles [G, k] of rows x [G, M] (sorted) with cumulative weights cum_w [G, M+1]."""
    targets = (np.arange(k) + 0.5) / k * cum_w[:, -1:]
    start = np.minimum(RowSearch(cum_w[:, 1:]).count_below(targets), x.shape[1] - 1)
    return np.take_along_axis(x, start, axis=1)


def uniform_init(x: np.ndarray, cum_w: np.ndarray, k: int) -> np.ndarray:
    """k evenly spaced points [G, k] over each row's range."""
    return x[:, :1] + (x[:, -1:] - x[:, :1]) * (np.arange(k) + 0.5) / k


INITS = (companding_init, quantile_init, uniform_init)


def lloyd(x, cum_w, cum_wx, centroids, iters: int):
    """Lloyd steps on sorted rows x [G, M] from ``centroids`` [G, k] until no boundary moves.
    Returns ``(centroids, weight [G, k], total [G, k])`` (each cluster's weight and weighted sum)."""
    count, width = x.shape
    search = RowSearch(x)
    edges = np.zeros((count, 1), np.intp), np.full((count, 1), width)
    bounds = None
    for _ in range(max(iters, 1)):
        cuts = search.count_below((centroids[:, 1:] + centroids[:, :-1]) / 2)
        new_bounds = np.concatenate([edges[0], cuts, edges[1]], axis=1)
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        weight = np.diff(np.take_along_axis(cum_w, bounds, axis=1), axis=1)
        total = np.diff(np.take_along_axis(cum_wx, bounds, axis=1), axis=1)
        centroids = np.sort(np.where(weight > 0, total / np.where(weight > 0, weight, 1), centroids), axis=1)
    return centroids, weight, total


def reseed_empty(x, w, centroids, weight):
    """Move one empty cluster of each row to the value with the largest weighted error.
    Returns ``(centroids, moved)``; rows whose values are all served exactly are not moved."""
    nearest = np.take_along_axis(centroids, nearest_codes(x, centroids).astype(np.intp), axis=1)
    errors = w * np.square(x - nearest)
    worst = np.argmax(errors, axis=1)
    everyone = np.arange(len(x))
    moved = errors[everyone, worst] > 0
    centroids = centroids.copy()
    centroids[everyone, np.argmax(weight <= 0, axis=1)] = np.where(moved, x[everyone, worst],
                                                                   centroids[everyone, np.argmax(weight <= 0, axis=1)])
    return np.sort(centroids, axis=1), moved


def lloyd_sorted(x: np.ndarray, w: np.ndarray, k: int, iters: int) -> np.ndarray:
    """k-means of rows ``x`` [G, M] float64 sorted ascending with weights ``w`` [G, M] -> [G, k].

    Lloyd's iterations run from each of :data:`INITS`; an empty cluster is moved to the
    worst-served value and Lloyd runs again (up to k times); each row keeps the result with
    the smallest weighted squared error.
    """
    count = len(x)
    zero = np.zeros((count, 1))
    cum_w = np.concatenate([zero, np.cumsum(w, axis=1)], axis=1)
    cum_wx = np.concatenate([zero, np.cumsum(w * x, axis=1)], axis=1)
    best, best_gain = None, None
    for init in INITS:
        centroids, weight, total = lloyd(x, cum_w, cum_wx, init(x, cum_w, k), iters)
        rows = np.flatnonzero((weight <= 0).any(axis=1))
        for _ in range(k):
            if len(rows):
                seeded, moved = reseed_empty(x[rows], w[rows], centroids[rows], weight[rows])
                rows, seeded = rows[moved], seeded[moved]
            if not len(rows):
                break
            centroids[rows], weight[rows], total[rows] = lloyd(x[rows], cum_w[rows], cum_wx[rows], seeded, iters)
            rows = rows[(weight[rows] <= 0).any(axis=1)]
        # error = sum w x^2 - sum_j S_j^2 / W_j for cluster sums S_j, W_j: keep the largest gain
        gain = np.where(weight > 0, np.square(total) / np.where(weight > 0, weight, 1), 0).sum(axis=1)
        if best is None:
            best, best_gain = centroids, gain
        else:
            better = gain > best_gain * (1 + 1e-12)
            best, best_gain = np.where(better[:, None], centroids, best), np.where(better, gain, best_gain)
    return best


def kmeans_1d(values: np.ndarray, k: int, weights: np.ndarray | None = None, iters: int = 60) -> np.ndarray:
    """Weighted k-means of each row: values [G, M], weights [G, M] (None: all 1) -> centroids
    float32 [G, k], sorted ascending. Minimizes sum w * (value - nearest centroid)^2 per row."""
    values = np.asarray(values, np.float32)
    count, width = values.shape
    out = np.empty((count, k), np.float32)
    step = max(1, CHUNK_VALUES // max(width, 1))
    for first in range(0, count, step):
        rows = slice(first, first + step)
        order = np.argsort(values[rows], axis=1)
        x = np.take_along_axis(values[rows], order, axis=1).astype(np.float64)
        w = np.ones_like(x) if weights is None else np.take_along_axis(
            np.asarray(weights[rows], np.float64), order, axis=1)
        out[rows] = lloyd_sorted(x, w, k, iters)
    return out


def nearest_codes(values: np.ndarray, palettes: np.ndarray) -> np.ndarray:
    """Index of the nearest palette entry: values [G, M], palettes [G, k] sorted -> uint8 [G, M]."""
    values = np.asarray(values, np.float32)
    palettes = np.asarray(palettes, np.float32)
    middles = (palettes[:, 1:] + palettes[:, :-1]) / 2
    codes = np.zeros(values.shape, np.uint8)
    for j in range(middles.shape[1]):
        codes += values > middles[:, j : j + 1]
    return codes
