"""A calibration engine run over calibration windows one decoder block at a time.

Block i is observed on the hidden states the (possibly just updated) blocks < i produce, so a
method that changes block i's weights in ``update`` shows later blocks what it did; only one
block's inputs [samples, seq_len, hidden] are held at a time. Serves quantization
(:mod:`mlx_slm.quant.sequential`), pruning and fusing.

An engine is the numpy engine (:class:`~mlx_slm.models.numpy_llama.NumpyLlama`) or the MLX one
(:class:`~.mlx_engine.MLXEngine`, mlx-lm's own blocks); what this module uses of it:
``num_layers``, ``embed(tokens [B, T]) -> h [B, T, D]``, ``block(layer, h) -> h``, ``observer``
(called with each linear layer's name and input), ``dense_names()`` / ``drop_cache(names)`` (float32
weights it holds for layers) and ``arrays``, its array operations (default
:class:`~.statistics.NumpyArrays`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from tqdm import tqdm

from ..progress import hidden
from .statistics import InputStatistics, NumpyArrays


def arrays_of(engine):
    """The engine's array operations: the MLX engine's, else numpy's."""
    return getattr(engine, "arrays", NumpyArrays)


def in_batches(function, h, batch_size: int, arrays=NumpyArrays):
    """Apply ``function`` to ``h`` [S, ...] in slices of ``batch_size`` samples; concatenate."""
    return arrays.concatenate([function(h[i : i + batch_size]) for i in range(0, len(h), batch_size)])


def calibrate_blocks(engine, names, tokens: np.ndarray, gram: bool, update, desc: str, batch_size: int = 4,
                     progress: bool = True, order=sorted, done=None) -> np.ndarray:
    """Feed ``tokens`` [S, T] through ``engine`` one decoder block at a time.

    For each block: gather the :class:`InputStatistics` (with ``gram``) of its layers among
    ``names``, call ``update(block_names, stats)`` (which may change those layers' dense
    weights), then run the block again so the next one sees what the updated block produces,
    and call ``done(block_names)`` if given: nothing computes with the block again.
    Returns the hidden states after the last block, [S, T, D] (the engine's arrays).
    """
    arrays = arrays_of(engine)
    h = in_batches(engine.embed, tokens, batch_size, arrays)
    for layer in tqdm(range(engine.num_layers), desc=desc, disable=hidden(progress)):
        prefix = f"model.layers.{layer}."
        block_names = order(p for p in names if p.startswith(prefix))
        if block_names:
            stats = InputStatistics(block_names, gram, arrays)
            engine.observer = stats
            try:
                in_batches(partial(engine.block, layer), h, batch_size, arrays)
            finally:
                engine.observer = None
            stats.release()
            update(block_names, stats)
            del stats
        h = in_batches(partial(engine.block, layer), h, batch_size, arrays)
        engine.drop_cache([p for p in engine.dense_names() if p.startswith(prefix)])
        if block_names and done is not None:
            done(block_names)
    return h
