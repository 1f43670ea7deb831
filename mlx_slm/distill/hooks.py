"""Per-instance changes to decoder layers, undone on exit.

mlx-lm's models call their decoder layers in a loop; swapping one layer object's
class for a subclass changes how that layer runs without touching its parameters
(so paths and saving are unchanged) and without affecting other models that share
the class (a teacher of the same architecture, say).
"""

from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx

from ..errors import SLMError


def decoder_layers(model) -> list:
    layers = getattr(model, "layers", None)
    if layers is None:
        raise SLMError(f"{type(model).__name__} exposes no decoder layers (model.layers)")
    return list(layers)


@contextmanager
def swapped_classes(layers, make_subclass):
    originals = [layer.__class__ for layer in layers]
    try:
        for layer in layers:
            layer.__class__ = make_subclass(layer.__class__)
        yield
    finally:
        for layer, original in zip(layers, originals):
            layer.__class__ = original


def checkpointed(cls):
    """Subclass of a layer class whose call recomputes activations in the backward pass."""

    def __call__(self, *args, **kwargs):
        def run(params, *args, **kwargs):
            self.update(params)
            return cls.__call__(self, *args, **kwargs)

        return mx.checkpoint(run)(self.trainable_parameters(), *args, **kwargs)

    return type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": __call__})


@contextmanager
def gradient_checkpointing(model, enabled: bool = True):
    """Within the block, the model's decoder layers keep no activations for the backward pass."""
    if not enabled:
        yield
        return
    with swapped_classes(decoder_layers(model), checkpointed):
        yield


@contextmanager
def layer_outputs(model, indices):
    """Yield a dict that fills with ``{layer index: output hidden states [B, T, D]}`` on each call."""
    captured = {}
    chosen = {id(layer): i for i, layer in enumerate(decoder_layers(model)) if i in set(indices)}

    def recording(cls):
        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            captured[chosen[id(self)]] = out
            return out

        return type(f"Recording{cls.__name__}", (cls,), {"__call__": __call__})

    layers = [layer for layer in decoder_layers(model) if id(layer) in chosen]
    with swapped_classes(layers, recording):
        yield captured
