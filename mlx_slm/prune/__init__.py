"""Pruning: zeros in the weights (magnitude, Wanda, SparseGPT; unstructured or N:M), smaller
models (MLP channels, KV groups, whole layers), and the gradual-pruning schedule.

    mlx_slm.prune.prune(model, method="wanda", sparsity=0.5, calib="text.txt", tokenizer=tokenizer)
    mlx_slm.prune.prune(model, method="sparsegpt", pattern="2:4", calib="text.txt", tokenizer=tokenizer)
    mlx_slm.prune.prune_structured(model, mlp_fraction=0.25, drop_heads=1, drop_layers=2,
                                   calib="text.txt", tokenizer=tokenizer)
"""

from .schedule import sparsity_at
from .structured import block_influence, count_parameters, prune_structured
from .unstructured import METHODS, prune

__all__ = ["METHODS", "block_influence", "count_parameters", "prune", "prune_structured", "sparsity_at"]
