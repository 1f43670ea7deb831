"""Text sampled from the float model itself, to distill on where the calibration text is narrow.

LLM-QAT (Liu et al., 2023) trains a quantized model on text that its float model writes: each
sample starts at a token drawn uniformly from the vocabulary (special tokens excluded) and goes on
by sampling the model's own next-token distribution at temperature 1 until its end-of-text token or
``max_tokens``. Distilling on such text asks the quantized model to match the float one over
what the float model writes, not over one book's register. The sampling is mlx-lm's
``batch_generate`` (on a CPU inside :func:`mlx_slm.runtime.fast_cpu`'s float32 copy); the first
tokens come from numpy's seeded generator and the sampling from MLX's seeded one, so a rerun with
the same seed and batch size samples the same text.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from ..errors import SLMError
from ..progress import hidden

DATA = ("calib", "teacher")  # what a training method trains on: the calibration text, or text sampled here
SEPARATOR = "\n\n"  # between samples: a paragraph break, so a training window may span two samples
BATCH_SIZE = 32  # samples drawn at once
MARGIN = 1.25  # tokens sampled per token needed: decoded without special tokens, the text encodes to fewer


def first_tokens(tokenizer) -> np.ndarray:
    """The token ids a sample may start at: the vocabulary, special tokens excluded."""
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    return np.array([i for i in range(tokenizer.vocab_size) if i not in special])


def sample_tokens(model, tokenizer, tokens: int, seed: int = 0, batch_size: int = BATCH_SIZE, max_tokens: int = 384,
                  progress: bool = True) -> list[list[int]]:
    """Samples written by ``model`` (an MLX model; its tokenizer), each its first token and what followed
    up to ``max_tokens`` tokens or up to (not including) an end-of-text token, until they hold at least
    ``tokens`` tokens."""
    import mlx.core as mx
    from mlx_lm import batch_generate
    from mlx_lm.sample_utils import make_sampler

    from ..runtime import fast_cpu

    if tokens < 1 or batch_size < 1 or max_tokens < 1:
        raise SLMError(f"sampling text needs tokens, batch_size and max_tokens >= 1, not {tokens}, "
                       f"{batch_size} and {max_tokens}")
    rng = np.random.default_rng(seed)
    mx.random.seed(seed)
    starts = first_tokens(tokenizer)
    samples, total = [], 0
    bar = tqdm(total=tokens, desc="sampling text from the float model", unit="tok", disable=hidden(progress))
    with fast_cpu(model):
        while total < tokens:
            prompts = [[int(t)] for t in rng.choice(starts, size=batch_size)]
            done = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens,
                                  sampler=make_sampler(temp=1.0), return_token_ids=True)
            for prompt, ids in zip(prompts, done.token_ids):
                samples.append(prompt + [int(t) for t in ids])
                total += len(samples[-1])
            bar.update(min(tokens, total) - bar.n)
    bar.close()
    return samples


def sample_texts(model, tokenizer, counts, seed: int = 0, progress: bool = True, **sampling) -> list[str]:
    """For each of ``counts`` tokens, text sampled as :func:`sample_tokens` does (``sampling``: its
    batch_size and max_tokens), each sample decoded without its special tokens, joined by
    :data:`SEPARATOR`. The longest is sampled once and the others are its first batches: the sampler
    draws batch after batch from generators seeded once, so sampling fewer tokens gives exactly those."""
    batch_size = sampling.setdefault("batch_size", BATCH_SIZE)
    samples = sample_tokens(model, tokenizer, max(counts), seed, progress=progress, **sampling)
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in samples]
    totals = np.cumsum([len(ids) for ids in samples])
    # sampling ``count`` tokens stops after the batch of the sample where the total reaches it
    return [SEPARATOR.join(decoded[: (int(np.argmax(totals >= count)) // batch_size + 1) * batch_size])
            for count in counts]


def window_tokens(num_samples: int, seq_len: int) -> int:
    """Tokens sampled for ``num_samples`` windows of ``seq_len``
    (:meth:`mlx_slm.data.windows.Calibration.sampled`)."""
    return math.ceil(MARGIN * num_samples * seq_len)
