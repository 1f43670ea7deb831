"""Gradual magnitude pruning while distilling (Zhu & Gupta's polynomial schedule).

After every optimizer step the decoder's linear weights are multiplied by their
masks, so pruned weights stay zero; the masks are recomputed by magnitude
whenever the scheduled sparsity has grown by ``every`` (default 0.01) or the
schedule has ended. Settings: ``{"final": 0.5, "initial": 0.0, "start": 0,
"end": steps, "power": 3, "pattern": None | "2:4"}`` (an N:M pattern is applied at
once, not gradually).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx.utils import tree_unflatten

from ..errors import SLMError
from ..prune.masks import magnitude_mask, parse_pattern
from ..prune.schedule import sparsity_at

KNOWN = {"final", "initial", "start", "end", "power", "pattern", "every"}


class GradualPruning:
    """Keeps the student's decoder linear layers at the scheduled sparsity."""

    def __init__(self, model, settings: dict, steps: int):
        unknown = set(settings) - KNOWN
        if unknown:
            raise SLMError(f"unknown sparsity settings {sorted(unknown)}; known: {sorted(KNOWN)}")
        self.pattern = parse_pattern(settings["pattern"]) if settings.get("pattern") else None
        self.final = float(settings.get("final", 0.0))
        self.schedule = dict(initial=float(settings.get("initial", 0.0)), final=self.final,
                             start_step=int(settings.get("start", 0)), end_step=int(settings.get("end", steps)),
                             power=float(settings.get("power", 3)))
        sparsity_at(0, **self.schedule)  # checks the settings
        self.every = float(settings.get("every", 0.01))
        self.paths = [path for path, module in model.named_modules()
                      if isinstance(module, nn.Linear) and ".layers." in f".{path}"]
        self.masks, self.level = {}, None

    def target(self, step: int) -> float:
        return self.final if self.pattern else sparsity_at(step, **self.schedule)

    def after_step(self, model, step: int) -> float:
        """Apply the masks for ``step`` (recomputing them when due); return the sparsity in force."""
        target = self.target(step)
        modules = dict(model.named_modules())
        if self.level is None or target - self.level >= self.every or (target == self.final != self.level):
            self.masks = {path: mx.array(magnitude_mask(np.array(modules[path].weight.astype(mx.float32)),
                                                        target, self.pattern))
                          for path in self.paths}
            self.level = target
        model.update(tree_unflatten([(f"{path}.weight", modules[path].weight * mask.astype(modules[path].weight.dtype))
                                     for path, mask in self.masks.items()]))
        return self.level
