"""Refit a row's group scales and biases, codes fixed, to the layer's output error.

GPTQ fixes each group's grid before it picks the codes. Once the codes are known,
the scales ``s`` and biases ``b`` of one output row (``G = K/g`` groups each) that
minimize the output error ``(w - w_hat) H (w - w_hat)^T``, with
``w_hat_j = s_g q_j + b_g`` for column j of group g and H the damped input second
moments, solve a ``2G x 2G`` linear system (least squares in the H metric). With
``w_hat = B x`` (B: a row's basis of code and one columns per group, x = (s, b)),
the system is solved for the step from the old grid x0, ``S dx = B^T H (w - B x0)``,
so one product with H serves the fit and the error check: the error changes by
``dx S dx - 2 dx B^T H (w - B x0)``. A tiny ridge towards the old grid keeps groups
whose codes are all equal well-posed. After rounding to the stored dtype a row takes
the refitted grid only if it lowers the error by at least :data:`MARGIN` of it, so
the refit never makes a row worse.

The products with H are written over an engine's array operations (numpy's, or MLX's on a GPU);
the float64 systems are solved with numpy, since MLX solves no float64 systems on a GPU. They are
small (2G x 2G) and many: on numpy they are built and solved with one BLAS thread, slices of rows
spread over the cores, since a multi-threaded BLAS spends far longer waking its threads for each
small product and solve than computing it, and on a busy machine its waiting threads spin.
"""

from __future__ import annotations

import numpy as np

from ..calib.statistics import NumpyArrays
from ..formats.dtypes import as_float32, round_to
from .imatrix import on_cores, worker_count

RIDGE = 1e-6  # relative to the mean diagonal of each row's system
SYSTEM_ELEMENTS = 1 << 22  # float64 entries of the normal systems alive at once, over all cores (32 MB)
MARGIN = 1e-4  # least relative drop of a row's error that counts: far above float32's error on it


def dequantized(q: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, arrays=NumpyArrays):
    """float32 [N, K] = s_g * q + b_g per contiguous group, an array of ``arrays``' library."""
    n, k = q.shape
    grouped = arrays.array(q.reshape(n, -1, group_size))
    return (grouped * arrays.array(scales)[..., None] + arrays.array(biases)[..., None]).reshape(n, k)


def basis_products(codes, v, arrays=NumpyArrays) -> np.ndarray:
    """``B^T v`` per row, float64 [N, 2G]: (q_g . v_g for each group g, then 1 . v_g), for
    codes float32 [N, G, g] and v [N, K] (arrays of ``arrays``' library)."""
    grouped = v.reshape(codes.shape)
    return np.concatenate([arrays.sums64(grouped * codes), arrays.sums64(grouped)], axis=1)


def normal_system(codes, hessian, arrays=NumpyArrays) -> np.ndarray:
    """``B^T H B`` float64 [N, 2G, 2G] for unknowns (s_1..s_G, b_1..b_G), codes float32 [N, G, g].

    With H_gh the block of the float32 ``hessian`` [K, K] between groups g and h and q_g a row's
    codes in group g: [[q_g H_gh q_h, q_g H_gh 1], [1 H_gh q_h, 1 H_gh 1]]. The code-code block is
    symmetric: only h >= g is multiplied out. The products are taken with ``arrays`` (codes and
    hessian are its arrays), the system is assembled with numpy.
    """
    n, g_count, group_size = codes.shape
    k = g_count * group_size
    group_sums = hessian.reshape(k, g_count, group_size).sum(-1).reshape(g_count, group_size, g_count)
    sb = (codes.transpose(1, 0, 2) @ group_sums).transpose(1, 0, 2)  # [N, G(s), G(b)]
    system = np.empty((n, 2 * g_count, 2 * g_count), np.float64)
    for g in range(g_count):  # q_g H_gh q_h for h >= g, [N, G - g], mirrored below the diagonal
        rows = slice(g * group_size, (g + 1) * group_size)
        reach = (codes[:, g] @ hessian[rows, g * group_size :]).reshape(n, g_count - g, group_size)
        system[:, g, g:g_count] = arrays.numpy(arrays.row_dots(reach, codes[:, g:]), np.float32)
        system[:, g + 1 : g_count, g] = system[:, g, g + 1 : g_count]
    sb = arrays.numpy(sb, np.float32)
    system[:, :g_count, g_count:] = sb
    system[:, g_count:, :g_count] = sb.transpose(0, 2, 1)
    system[:, g_count:, g_count:] = arrays.numpy(group_sums.sum(1), np.float32)
    return system


def add_damping(system: np.ndarray, codes: np.ndarray, damp: float) -> None:
    """``system += damp * B^T B`` in place: per group, [[q.q, sum q], [sum q, g]] on the diagonals
    (codes numpy float32 [N, G, g])."""
    g_count, group_size = codes.shape[1:]
    s, b = np.arange(g_count), np.arange(g_count, 2 * g_count)
    code_sums = codes.sum(-1, dtype=np.float64)
    system[:, s, s] += damp * np.square(codes).sum(-1, dtype=np.float64)
    system[:, s, b] += damp * code_sums
    system[:, b, s] += damp * code_sums
    system[:, b, b] += damp * group_size


def refit_grid(w: np.ndarray, q: np.ndarray, scales: np.ndarray, biases: np.ndarray, hessian: np.ndarray,
               group_size: int, damp: float = 0.01, arrays=NumpyArrays):
    """Scales and biases [N, G] (dtype of ``scales``) refitted to codes ``q`` [N, K] for weights
    ``w`` [N, K] under input second moments ``hessian`` [K, K] (damped by ``damp`` x its mean
    diagonal); each row keeps the old grid where the refit, once rounded, does not lower its
    undamped output error. Rows are refitted in slices (on numpy one per core at a time) whose
    systems together hold at most :data:`SYSTEM_ELEMENTS` entries (a 14336-wide row with groups of
    32 has a 6.4 MB system). The products with H are taken with ``arrays`` (the calibration engine's
    ``arrays.for_methods()``), the float64 systems are solved with numpy (all arguments and results
    are numpy arrays)."""
    h = np.asarray(hessian, np.float32)
    h_arrays = arrays.array(h)
    workers = min(worker_count(), len(q)) if arrays is NumpyArrays else 1
    rows = max(1, SYSTEM_ELEMENTS // workers // (2 * scales.shape[1]) ** 2)

    def slice_of(i):
        part = slice(i, i + rows)
        return refit_rows(w[part], q[part], scales[part], biases[part], h, h_arrays, group_size, damp, arrays)

    parts = on_cores(slice_of, range(0, len(q), rows), workers=workers)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def refit_rows(w, q, scales, biases, h: np.ndarray, h_arrays, group_size: int, damp: float, arrays):
    """:func:`refit_grid` of a slice of rows, with the float32 Hessian ``h`` (numpy) and ``h_arrays``
    (``arrays``' copy of it)."""
    codes = q.reshape(len(q), -1, group_size).astype(np.float32)
    codes_arrays = arrays.array(codes)
    residual = arrays.array(np.asarray(w, np.float64) - dequantized(q, scales, biases, group_size))
    h_residual = residual @ h_arrays
    before = arrays.sums64(h_residual * residual)
    gradient = basis_products(codes_arrays, h_residual, arrays)  # B^T H (w - B x0)
    system = normal_system(codes_arrays, h_arrays, arrays)
    damping = damp * max(float(np.mean(np.diag(h))), 1e-30)
    damped = system.copy()
    add_damping(damped, codes, damping)
    size = damped.shape[1]
    ridge = RIDGE * np.abs(np.diagonal(damped, axis1=1, axis2=2)).mean(-1)
    damped[:, np.arange(size), np.arange(size)] += ridge[:, None]
    step = np.linalg.solve(damped, (gradient + damping * basis_products(codes_arrays, residual, arrays))[..., None])
    start = np.concatenate([as_float32(scales), as_float32(biases)], axis=1).astype(np.float64)
    g_count = scales.shape[1]
    solved = start + step[..., 0]
    new_scales, new_biases = round_to(solved[:, :g_count], scales.dtype), round_to(solved[:, g_count:], biases.dtype)
    taken = np.concatenate([as_float32(new_scales), as_float32(new_biases)], axis=1).astype(np.float64) - start
    finite = np.isfinite(taken).all(1)
    taken[~finite] = 0
    change = np.einsum("ni,nij,nj->n", taken, system, taken) - 2 * (taken * gradient).sum(1)
    better = (finite & (change < -MARGIN * before))[:, None]
    return np.where(better, new_scales, scales), np.where(better, new_biases, biases)
