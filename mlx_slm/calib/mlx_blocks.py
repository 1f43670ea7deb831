"""An mlx-lm model's decoder blocks, reached through its own forward pass (MLX only).

Every mlx-lm text model lists its decoder blocks in ``model.layers`` and calls each as
``block(h, mask, cache)``, with masks it builds itself (causal, sliding-window, ...), then a final
norm and the output head (``lm_head``, or the input embedding's ``as_linear`` when tied). So the
pieces a block-by-block pass needs are found by standing in for blocks and the head during one
forward pass, with no per-architecture table: the masks each block gets, the first block's inputs,
and the head's inputs for given last-block outputs. Serves block-wise training
(:mod:`mlx_slm.quant.blockwise`) and calibration on MLX (:mod:`.mlx_engine`).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx import nn

from ..errors import SLMError


class Stop(Exception):
    """Ends a forward pass once what was wanted is recorded."""


class Recorder:
    """Stands in for a block during one forward pass: records its input and mask, then runs it,
    passes its input on unchanged (``run=False``), or stops the pass with :class:`Stop`
    (``stop=True``). Other attributes are the block's."""

    def __init__(self, block, stop: bool, run: bool = True):
        self.block, self.stop, self.run, self.seen = block, stop, run, None

    def __getattr__(self, key):
        return getattr(self.block, key)

    def __call__(self, x, mask=None, cache=None):
        self.seen = (x, mask)
        if self.stop:
            raise Stop
        return self.block(x, mask, cache=cache) if self.run else x


class Inject(Recorder):
    """Stands in for the last block: returns the given hidden states, whatever its input."""

    def __init__(self, block, h: mx.array):
        super().__init__(block, stop=False)
        self.h = h

    def __call__(self, x, mask=None, cache=None):
        return self.h


class HeadRecorder(nn.Module):
    """Stands in for the output head: ``lm_head`` (called) or the input embedding (``as_linear``
    records, a lookup passes through). Records the head's input and stops the pass."""

    def __init__(self, module, path: str):
        super().__init__()
        self.module, self.path, self.seen = module, path, None

    def record(self, x):
        self.seen = x
        raise Stop

    def __call__(self, x):
        return self.module(x) if hasattr(self.module, "as_linear") else self.record(x)

    def as_linear(self, x):
        return self.record(x)


def blocks_of(model) -> list:
    """The decoder blocks, ``model.layers`` (a list SLMError when the model has none)."""
    blocks = getattr(model, "layers", None)
    if not isinstance(blocks, list) or not blocks:
        raise SLMError("this needs a model whose decoder blocks are listed in model.layers (every mlx-lm text model)")
    return blocks


def block_masks(model, tokens: mx.array) -> list:
    """The attention mask the model hands each block for windows of ``tokens``'s length [1, T].
    Masks depend on the windows' shape only, so the blocks are passed over, not run."""
    blocks = blocks_of(model)
    recorders = [Recorder(block, stop=False, run=False) for block in blocks]
    blocks[:] = recorders
    try:
        mx.eval(model(tokens[:1]))
    finally:
        blocks[:] = [r.block for r in recorders]
    return [r.seen[1] for r in recorders]


def first_block_input(model, tokens: mx.array) -> mx.array:
    """What the model hands its first block for ``tokens`` [B, T], as float32 [B, T, D]."""
    blocks = blocks_of(model)
    recorder = Recorder(blocks[0], stop=True)
    blocks[0] = recorder
    try:
        model(tokens)
    except Stop:
        pass
    finally:
        blocks[0] = recorder.block
    return recorder.seen[0].astype(mx.float32)


def block_inputs(model, tokens: np.ndarray, batch_size: int) -> mx.array:
    """The first block's inputs [S, T, D] float32 for windows ``tokens`` [S, T]."""
    out = []
    for first in range(0, len(tokens), batch_size):
        out.append(first_block_input(model, mx.array(tokens[first:first + batch_size])))
        mx.eval(out[-1])
    return mx.concatenate(out)


def head_modules(model) -> list[tuple[object, str, str]]:
    """(parent module, attribute, path) of the modules that can be the output head: ``lm_head`` and
    every embedding (the tied head is the input embedding's ``as_linear``)."""
    modules = dict(model.named_modules())
    found = []
    for path, module in modules.items():
        if path == "lm_head" or isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
            parent, _, attribute = path.rpartition(".")
            found.append((modules[parent], attribute, path))
    return found


def tail(model, h: mx.array):
    """What the model computes after its last block when that block outputs ``h`` [B, T, D] (its
    final norm and head: logits), run through the model's own forward pass."""
    blocks = blocks_of(model)
    saved = blocks[:]
    blocks[:] = [Recorder(block, stop=False, run=False) for block in saved[:-1]] + [Inject(saved[-1], h)]
    try:
        return model(mx.zeros(h.shape[:2], dtype=mx.int32))
    finally:
        blocks[:] = saved


def head_input(model, h: mx.array) -> tuple[str, mx.array]:
    """``(head path, input)``: the layer mapping hidden states to logits and what it reads when the
    last block outputs ``h`` [B, T, D] (the final norm's output, from the model's own forward pass)."""
    heads = [(parent, attribute, HeadRecorder(getattr(parent, attribute), path))
             for parent, attribute, path in head_modules(model)]
    for parent, attribute, recorder in heads:
        setattr(parent, attribute, recorder)
    try:
        tail(model, h)
    except Stop:
        pass
    finally:
        for parent, attribute, recorder in heads:
            setattr(parent, attribute, recorder.module)
    seen = [recorder for _, _, recorder in heads if recorder.seen is not None]
    if len(seen) != 1:
        raise SLMError("could not find the output head: no lm_head or embedding read the final hidden states")
    return seen[0].path, seen[0].seen
