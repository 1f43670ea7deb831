"""Training windows from local text, in a fixed order a run can resume from.

Text (a .txt / .jsonl path or a list of strings, as everywhere in mlx_slm) is cut
into non-overlapping windows of ``seq_len + 1`` tokens: the inputs are the first
``seq_len`` and the targets the last ``seq_len``. Window order is a permutation
per epoch drawn from the seed, so the batch of any step is known without
replaying the run, and data-parallel ranks take interleaved rows of it.
"""

from __future__ import annotations

import numpy as np

from ..data.windows import token_windows
from ..errors import SLMError


def held_out_windows(tokenizer, text, seq_len: int, count: int) -> np.ndarray:
    """The windows a run evaluates on: the first ``count`` non-overlapping windows of ``seq_len + 1``
    tokens of ``text``, [count, seq_len + 1] int32 (inputs ``[:, :-1]``, targets ``[:, 1:]``). One
    definition, so a method measuring its start and end (e2e) scores the windows the trainer's
    curve scores."""
    return token_windows(tokenizer, text, seq_len + 1, count)


class WindowBatches:
    """Batches of token windows: ``batch(step, micro) -> (inputs, targets)``, [rows, seq_len] int32 each."""

    def __init__(self, tokenizer, text, seq_len: int, batch_size: int, grad_accum: int = 1, seed: int = 0,
                 rank: int = 0, world: int = 1):
        if batch_size < 1 or grad_accum < 1:
            raise SLMError("batch_size and grad_accum must be at least 1")
        if batch_size % world:
            raise SLMError(f"batch_size {batch_size} does not split over {world} processes")
        self.windows = token_windows(tokenizer, text, seq_len + 1, None)
        if len(self.windows) < batch_size:
            raise SLMError(f"the training text gives {len(self.windows)} windows of {seq_len + 1} tokens, "
                           f"fewer than one batch of {batch_size}")
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self.rank, self.world = rank, world

    @property
    def tokens_per_step(self) -> int:
        """Input tokens one optimizer step consumes over all processes."""
        return self.batch_size * self.grad_accum * (self.windows.shape[1] - 1)

    def rows(self, step: int, micro: int) -> np.ndarray:
        """Window indices of micro-batch ``micro`` of optimizer step ``step`` (all ranks)."""
        per_epoch = len(self.windows) // self.batch_size
        serial = step * self.grad_accum + micro
        epoch, slot = divmod(serial, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
        return order[slot * self.batch_size: (slot + 1) * self.batch_size]

    def used_windows(self, steps: int) -> np.ndarray:
        """Sorted indices of the windows that steps 0 .. steps-1 read (all processes)."""
        return np.unique(np.concatenate([self.rows(step, micro) for step in range(steps)
                                         for micro in range(self.grad_accum)]))

    def batch(self, step: int, micro: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(window indices, inputs, targets)`` of this process's share of the micro-batch."""
        mine = self.rows(step, micro)[self.rank::self.world]
        windows = self.windows[mine]
        return mine, windows[:, :-1], windows[:, 1:]
