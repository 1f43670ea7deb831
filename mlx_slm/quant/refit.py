"""Refit a row's group scales and biases, codes fixed, to the layer's output error.

GPTQ fixes each group's grid before it picks the codes. Once the codes are known,
the scales ``s`` and biases ``b`` of one output row (``G = K/g`` groups each) that
minimize the output error ``(w - w_hat) H (w - w_hat)^T``, with
``w_hat_j = s_g q_j + b_g`` for column j of group g and H the damped input second
moments, solve a ``2G x 2G`` linear system (least squares in the H metric). A tiny
ridge towards the old grid keeps groups whose codes are all equal well-posed.
After rounding to the stored dtype a row takes the refitted grid only if it lowers
the error by at least :data:`MARGIN` of it, so the refit never makes a row worse.
"""

from __future__ import annotations

import numpy as np

from ..formats.dtypes import as_float32, round_to

RIDGE = 1e-6  # relative to the mean diagonal of each row's system
MARGIN = 1e-4  # least relative drop of a row's error that counts: far above float32's error on it


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Per-row ``(w - w_hat) H (w - w_hat)^T``: w, w_hat [N, K], hessian [K, K] -> float64 [N].
    The differences are taken in float64, the products in float32 (relative error about 1e-6)."""
    delta = (np.asarray(w, np.float64) - w_hat).astype(np.float32)
    return (delta @ np.asarray(hessian, np.float32) * delta).sum(-1, dtype=np.float64)


def dequantized(q: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int) -> np.ndarray:
    """float32 [N, K] = s_g * q + b_g per contiguous group."""
    n, k = q.shape
    grouped = q.reshape(n, -1, group_size).astype(np.float32)
    return (grouped * as_float32(scales)[..., None] + as_float32(biases)[..., None]).reshape(n, k)


def normal_equations(w: np.ndarray, q: np.ndarray, hessian: np.ndarray, group_size: int):
    """(system [N, 2G, 2G], right-hand side [N, 2G]) in float64 for unknowns (s_1..s_G, b_1..b_G).

    With H_gh the block of the float32 ``hessian`` [K, K] between groups g and h and q_g a row's
    codes in group g: system = [[q_g H_gh q_h, q_g H_gh 1], [1 H_gh q_h, 1 H_gh 1]] and
    rhs = [q_g (H w)_g, 1 (H w)_g]. The code-code block is symmetric: only h >= g is multiplied out.
    """
    n, k = q.shape
    g_count = k // group_size
    codes = q.astype(np.float32).reshape(n, g_count, group_size)
    group_sums = hessian.reshape(k, g_count, group_size).sum(-1).reshape(g_count, group_size, g_count)
    sb = np.matmul(codes.transpose(1, 0, 2), group_sums).transpose(1, 0, 2)  # [N, G(s), G(b)]
    ss = np.empty((n, g_count, g_count), np.float64)
    for g in range(g_count):
        rows = slice(g * group_size, (g + 1) * group_size)
        reach = (codes[:, g] @ hessian[rows, g * group_size :]).reshape(n, g_count - g, group_size)
        ss[:, g, g:] = np.einsum("nhj,nhj->nh", reach, codes[:, g:])
        ss[:, g + 1 :, g] = ss[:, g, g + 1 :]
    system = np.empty((n, 2 * g_count, 2 * g_count), np.float64)
    system[:, :g_count, :g_count] = ss
    system[:, :g_count, g_count:] = sb
    system[:, g_count:, :g_count] = sb.transpose(0, 2, 1)
    system[:, g_count:, g_count:] = group_sums.sum(1)
    hw = (as_float32(w) @ hessian).reshape(n, g_count, group_size)
    rhs = np.concatenate([(hw * codes).sum(-1), hw.sum(-1)], axis=1)
    return system, rhs.astype(np.float64)


def refit_grid(w: np.ndarray, q: np.ndarray, scales: np.ndarray, biases: np.ndarray, hessian: np.ndarray,
               group_size: int, damp: float = 0.01):
    """Scales and biases [N, G] (dtype of ``scales``) refitted to codes ``q`` [N, K] for weights
    ``w`` [N, K] under input second moments ``hessian`` [K, K] (damped by ``damp`` x its mean
    diagonal); each row keeps the old grid where the refit, once rounded, does not lower its
    undamped output error."""
    h = np.array(hessian, np.float32)
    h[np.diag_indices_from(h)] += damp * max(float(np.mean(np.diag(h))), 1e-30)
    system, rhs = normal_equations(w, q, h, group_size)
    start = np.concatenate([as_float32(scales), as_float32(biases)], axis=1).astype(np.float64)
    ridge = RIDGE * np.abs(np.diagonal(system, axis1=1, axis2=2)).mean(-1)
    system[:, np.arange(start.shape[1]), np.arange(start.shape[1])] += ridge[:, None]
    solved = np.linalg.solve(system, (rhs + ridge[:, None] * start)[..., None])[..., 0]
    g_count = scales.shape[1]
    new_scales, new_biases = round_to(solved[:, :g_count], scales.dtype), round_to(solved[:, g_count:], biases.dtype)
    finite = np.isfinite(as_float32(new_scales)).all(1) & np.isfinite(as_float32(new_biases)).all(1)
    before = output_error(w, dequantized(q, scales, biases, group_size), hessian)
    after = output_error(w, dequantized(q, new_scales, new_biases, group_size), hessian)
    better = (finite & (after < (1 - MARGIN) * before))[:, None]
    return np.where(better, new_scales, scales), np.where(better, new_biases, biases)
