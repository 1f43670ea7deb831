"""The float teacher's logits and their top-k: one way for every trainer that distils
(learned scales, distillation and end-to-end QAT, their teacher caches).

The teacher runs on the engine :func:`mlx_slm.model_access.choose_engine` picks for
evaluation (on a CPU the numpy engine for the Llama family, MLX in float32 otherwise),
so a teacher's logits are the ones the evaluation scores against.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import numpy as np

from ..evaluate import make_runner


@contextmanager
def teacher_logits(teacher):
    """Within ``with``: a function of tokens [B, T] int32 -> float32 logits [B, T, V] (numpy)."""
    with ExitStack() as stack:
        yield make_runner(teacher, stack, None).batch_logits


def top_k_logits(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[..., V] -> (values [..., k] in decreasing order, indices [..., k] int32); k is capped at V.
    Which of several equal values at the k-th place is taken is unspecified."""
    k = min(k, logits.shape[-1])
    part = np.argpartition(-logits, k - 1, axis=-1)[..., :k]  # the k largest, unordered: no full sort
    order = np.argsort(-np.take_along_axis(logits, part, axis=-1), axis=-1, kind="stable")
    indices = np.take_along_axis(part, order, axis=-1)
    return np.take_along_axis(logits, indices, axis=-1), indices.astype(np.int32)
