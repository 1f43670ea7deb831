"""The numpy engine run over calibration windows one decoder block at a time.

Block i is observed on the hidden states the (possibly just updated) blocks < i produce, so a
method that changes block i's weights in ``update`` shows later blocks what it did; only one
block's inputs [samples, seq_len, hidden] are held at a time. Serves quantization
(:mod:`mlx_slm.quant.sequential`), pruning and fusing.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from tqdm import tqdm

from ..progress import hidden
from .statistics import InputStatistics


def in_batches(function, h: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply ``function`` to ``h`` [S, ...] in slices of ``batch_size`` samples; concatenate."""
    return np.concatenate([function(h[i : i + batch_size]) for i in range(0, len(h), batch_size)])


def calibrate_blocks(engine, names, tokens: np.ndarray, gram: bool, update, desc: str, batch_size: int = 4,
                     progress: bool = True, order=sorted, done=None) -> np.ndarray:
    """Feed ``tokens`` [S, T] through the numpy ``engine`` one decoder block at a time.

    For each block: gather the :class:`InputStatistics` (with ``gram``) of its layers among
    ``names``, call ``update(block_names, stats)`` (which may change those layers' dense
    weights), then run the block again so the next one sees what the updated block produces,
    and call ``done(block_names)`` if given: nothing computes with the block again.
    Returns the hidden states after the last block, [S, T, D].
    """
    h = in_batches(engine.embed, tokens, batch_size)
    for layer in tqdm(range(engine.num_layers), desc=desc, disable=hidden(progress)):
        prefix = f"model.layers.{layer}."
        block_names = order(p for p in names if p.startswith(prefix))
        if block_names:
            stats = InputStatistics(block_names, gram=gram)
            engine.observer = stats
            try:
                in_batches(partial(engine.block, layer), h, batch_size)
            finally:
                engine.observer = None
            stats.release()
            update(block_names, stats)
            del stats
        h = in_batches(partial(engine.block, layer), h, batch_size)
        engine.drop_cache([p for p in engine.dense_names() if p.startswith(prefix)])
        if block_names and done is not None:
            done(block_names)
    return h
