"""Distillation losses, as MLX array ops.

The loss of our seed documents, per token, averaged over the tokens a mask keeps:

    L = alpha * CE(y, p_s) + (1 - alpha) * T^2 * D(p_t^T, p_s^T)

where ``p^T = softmax(z / T)`` and D is one of:

- ``forward``: KL(p_t || p_s), the classic Hinton loss (mean-seeking);
- ``reverse``: KL(p_s || p_t) (mode-seeking, as in MiniLLM);
- ``skew``: KL(p_t || lam * p_t + (1 - lam) * p_s), the skew KL of DistiLLM (lam = ``skew``);
- ``jsd``: beta * KL(p_t || m) + (1 - beta) * KL(p_s || m), m = beta * p_t + (1 - beta) * p_s
  (beta = ``skew``; 0.5 gives the symmetric Jensen-Shannon divergence).

A teacher cached as its top-k logits (:mod:`.teacher_cache`) restricts both
distributions to the teacher's k tokens and renormalizes them there; with k equal
to the vocabulary the result is the full loss.
"""

from __future__ import annotations

import mlx.core as mx

from ..errors import SLMError
from .config import DIVERGENCES


def kl(log_p: mx.array, log_q: mx.array) -> mx.array:
    """KL(p || q) over the last axis from log-probabilities: [..., V] -> [...]."""
    return (mx.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def log_mixture(log_p: mx.array, log_q: mx.array, weight: float) -> mx.array:
    """log(weight * p + (1 - weight) * q), computed stably."""
    return mx.logaddexp(log_p + mx.log(mx.array(weight)), log_q + mx.log(mx.array(1.0 - weight)))


def divergence(log_teacher: mx.array, log_student: mx.array, kind: str = "forward", skew: float = 0.1) -> mx.array:
    """D(p_t, p_s) per position from log-probabilities [..., V] -> [...]."""
    if kind == "forward":
        return kl(log_teacher, log_student)
    if kind == "reverse":
        return kl(log_student, log_teacher)
    if not 0.0 < skew < 1.0:
        raise SLMError(f"skew must lie strictly between 0 and 1, not {skew}")
    if kind == "skew":
        return kl(log_teacher, log_mixture(log_teacher, log_student, skew))
    if kind == "jsd":
        mixture = log_mixture(log_teacher, log_student, skew)
        return skew * kl(log_teacher, mixture) + (1.0 - skew) * kl(log_student, mixture)
    raise SLMError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")


def log_softmax(logits: mx.array) -> mx.array:
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def masked_mean(values: mx.array, mask: mx.array) -> mx.array:
    """Mean of ``values`` [B, T] over the positions where ``mask`` [B, T] is 1."""
    mask = mask.astype(values.dtype)
    return (values * mask).sum() / mx.maximum(mask.sum(), 1.0)


def with_tail(log_top: mx.array) -> mx.array:
    """[..., k] log-probabilities of k of the tokens -> [..., k + 1]: the k and the log of the mass
    of all the others (floored at 1e-12 against rounding)."""
    tail = mx.log(mx.maximum(1.0 - mx.exp(log_top).sum(-1, keepdims=True), 1e-12))
    return mx.concatenate([log_top, tail], axis=-1)


def kd_loss(student_logits: mx.array, targets: mx.array, mask: mx.array, teacher_logits: mx.array,
            teacher_indices: mx.array | None = None, alpha: float = 0.5, temperature: float = 2.0,
            kind: str = "forward", skew: float = 0.1, teacher_lse: mx.array | None = None) -> tuple[mx.array, dict]:
    """The distillation loss and its parts.

    student_logits: [B, T, V]; targets: [B, T] next-token ids; mask: [B, T] (1 = counted).
    teacher_logits: [B, T, V], or [B, T, k] top-k values with ``teacher_indices`` [B, T, k].
    teacher_lse: with top-k values, the teacher's logsumexp over the whole vocabulary of
    ``logits / temperature`` [B, T]: the divergence is then taken over k + 1 outcomes, the k
    tokens and "any other token" for both models, so mass the student moves outside the
    teacher's top k is penalized. Without it both are renormalized over the k tokens.
    Returns ``(loss scalar, {"ce": ..., "kd": ...})`` (float32).
    """
    if not 0.0 <= alpha <= 1.0:
        raise SLMError(f"alpha must lie in [0, 1], not {alpha}")
    if temperature <= 0:
        raise SLMError(f"temperature must be positive, not {temperature}")
    student_logits = student_logits.astype(mx.float32)
    log_probs = log_softmax(student_logits)
    ce = -mx.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    student_t = student_logits / temperature
    teacher_t = teacher_logits.astype(mx.float32) / temperature
    if teacher_lse is not None:
        student_log = log_probs if temperature == 1.0 else log_softmax(student_t)  # one full-vocabulary pass at T=1
        student_top = mx.take_along_axis(student_log, teacher_indices, axis=-1)
        teacher_top = teacher_t - teacher_lse.astype(mx.float32)[..., None]
        distill = divergence(with_tail(teacher_top), with_tail(student_top), kind, skew)
    else:
        if teacher_indices is not None:
            student_t = mx.take_along_axis(student_t, teacher_indices, axis=-1)
        distill = divergence(log_softmax(teacher_t), log_softmax(student_t), kind, skew)
    ce, distill = masked_mean(ce, mask), masked_mean(distill, mask)
    loss = alpha * ce + (1.0 - alpha) * temperature**2 * distill
    return loss, {"ce": ce, "kd": distill}


def feature_loss(student_hidden: list, teacher_hidden: list, projections: list) -> mx.array:
    """Mean over layer pairs of ||P h_s - h_t||^2 / ||h_t||^2 (hidden states [B, T, D])."""
    total = mx.array(0.0)
    for h_s, h_t, project in zip(student_hidden, teacher_hidden, projections):
        h_t = h_t.astype(mx.float32)
        mapped = project(h_s.astype(mx.float32)) if project is not None else h_s.astype(mx.float32)
        total = total + mx.square(mapped - h_t).sum() / mx.maximum(mx.square(h_t).sum(), 1e-12)
    return total / max(len(student_hidden), 1)
