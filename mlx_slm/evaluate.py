"""Evaluate a model: perplexity, agreement with a reference, size, speed, memory."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack

import numpy as np
from tqdm import tqdm

from . import _blas
from .backend import backend_of
from .data.windows import token_windows
from .model_access import access, choose_engine
from .progress import hidden
from .stats import weight_stats

SCORED_ROWS = 64  # positions whose log-probabilities are held at once


class Runner:
    """Uniform access to a model: float32 logits and greedy decode speed."""

    engine = "numpy"

    def __init__(self, model):
        self.model = model
        if hasattr(model, "materialize"):
            model.materialize()  # dequantize before anything is timed

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """tokens ``[T]`` -> float32 logits ``[T, V]``."""
        return self.batch_logits(tokens[None])[0]

    def batch_logits(self, tokens: np.ndarray) -> np.ndarray:
        """tokens ``[B, T]`` -> float32 logits ``[B, T, V]``."""
        return self.model(tokens)

    def decode_speed(self, prompt: np.ndarray, steps: int) -> float:
        """Greedy tokens per second after prefilling ``prompt``, with a KV cache."""
        cache = self.model.make_cache()
        logits = self.model(prompt[None], cache=cache)
        start = time.perf_counter()
        for _ in range(steps):
            logits = self.model(logits[:, -1:].argmax(-1), cache=cache)
        return steps / (time.perf_counter() - start)


class MLXRunner(Runner):
    """An mlx-lm model run by MLX (float32 dense weights on a CPU, see runtime.fast_cpu)."""

    engine = "mlx"

    def __init__(self, model, stack: ExitStack):
        from .runtime import fast_cpu

        super().__init__(model)
        stack.enter_context(fast_cpu(model))

    def batch_logits(self, tokens: np.ndarray) -> np.ndarray:
        import mlx.core as mx

        out = self.model(mx.array(tokens)).astype(mx.float32)
        mx.eval(out)
        return np.array(out)

    def decode_speed(self, prompt: np.ndarray, steps: int) -> float:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.model)
        logits = self.model(mx.array(prompt)[None], cache=cache)
        mx.eval(logits)
        start = time.perf_counter()
        for _ in range(steps):
            logits = self.model(mx.argmax(logits[:, -1:], axis=-1), cache=cache)
            mx.eval(logits)
        return steps / (time.perf_counter() - start)


def make_runner(model, stack: ExitStack, cpu_engine: str | None) -> Runner:
    engine = choose_engine(model, cpu_engine)
    if engine == "mlx":
        return MLXRunner(model, stack)
    return Runner(access(model).numpy_engine())


def window_scores(logits: np.ndarray, ref_logits, targets: np.ndarray) -> tuple:
    """(sum of -log p(target), sum of KL(reference || model), top-1 agreements) over a window's
    positions, ``logits`` / ``ref_logits`` [T, V] float32 and ``targets`` [T - 1], scored
    :data:`SCORED_ROWS` positions at a time (a 512 x 150k window's log-probabilities would be 300 MB)."""
    nll = kl = agree = 0.0
    for start in range(0, len(targets), SCORED_ROWS):
        rows = slice(start, min(start + SCORED_ROWS, len(targets)))
        logprobs = log_softmax(logits[rows])
        nll += -logprobs[np.arange(len(logprobs)), targets[rows]].sum()
        if ref_logits is not None:
            ref_logprobs = log_softmax(ref_logits[rows])
            kl += (np.exp(ref_logprobs) * (ref_logprobs - logprobs)).sum()
            agree += (ref_logprobs.argmax(-1) == logprobs.argmax(-1)).sum()
    return nll, kl, agree


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def peak_memory(engine: str) -> int:
    """Peak MLX allocation for the MLX engine; the process's peak RSS for numpy."""
    if engine == "mlx":
        import mlx.core as mx

        return int(mx.get_peak_memory())
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def evaluate(model, tokenizer, text, reference=None, seq_len: int = 512, max_windows: int | None = None,
             decode_tokens: int = 32, progress: bool = True, cpu_engine: str | None = None) -> dict:
    """Measure ``model`` on ``text``.

    text: a .txt/.jsonl path or a list of strings. reference: a model (same tokenizer)
    to compare against. Each window of ``seq_len`` tokens scores its last
    ``seq_len - 1`` tokens. Returns a dict with ``ppl``, ``kld`` (mean per-token
    KL(reference || model), None without a reference), ``top1`` (argmax agreement),
    ``bpw``, ``size_bytes``, ``tokens_per_s`` (greedy decode), ``eval_tokens_per_s``,
    ``peak_memory_bytes`` and the window counts. cpu_engine: on a CPU, run MLX models on
    the "numpy" engine (default for the Llama family) or on "mlx".
    """
    windows = token_windows(tokenizer, text, seq_len, max_windows)
    backend = backend_of(model)
    nll_sum = kl_sum = agree = scored = 0.0
    model_seconds = 0.0
    with ExitStack() as stack:
        runner = make_runner(model, stack, cpu_engine)
        ref_runner = make_runner(reference, stack, cpu_engine) if reference is not None else None
        if runner.engine == "mlx":
            import mlx.core as mx

            mx.reset_peak_memory()
        for window in tqdm(windows, desc="evaluating", disable=hidden(progress)):
            start = time.perf_counter()
            logits = runner.logits(window)
            model_seconds += time.perf_counter() - start
            ref_logits = ref_runner.logits(window) if ref_runner is not None else None
            nll, kl, agreeing = window_scores(logits, ref_logits, window[1:])
            nll_sum, kl_sum, agree = nll_sum + nll, kl_sum + kl, agree + agreeing
            scored += len(window) - 1
        decode = runner.decode_speed(windows[0][: min(16, seq_len)], decode_tokens) if decode_tokens else None
    stats = weight_stats(model)
    return {
        "ppl": float(np.exp(nll_sum / scored)),
        "nll": float(nll_sum / scored),
        "kld": float(kl_sum / scored) if reference is not None else None,
        "top1": float(agree / scored) if reference is not None else None,
        "bpw": stats["bpw"],
        "size_bytes": stats["size_bytes"],
        "tokens_per_s": decode,
        "eval_tokens_per_s": float(windows.size / model_seconds),
        "peak_memory_bytes": peak_memory(runner.engine),
        "windows": int(len(windows)),
        "scored_tokens": int(scored),
        "seq_len": int(seq_len),
        "backend": backend,
        "engine": runner.engine,
        "blas": _blas.describe() if runner.engine == "mlx" else "numpy's bundled BLAS",
    }
