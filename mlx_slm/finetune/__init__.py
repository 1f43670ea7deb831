"""Fine-tuning: LoRA, DoRA and QLoRA adapters on JSONL data, and a fuse that keeps them (needs MLX).

    from mlx_slm.finetune import finetune, fuse, load_adapters
    history = finetune(model, tokenizer, "train.jsonl", method="lora", steps=200, adapter_dir="adapters")
    fuse(model, requantize="gptq", calib="calib.txt", tokenizer=tokenizer)   # quantized base: GPTQ, not RTN
    mlx_slm.save(model, tokenizer, "fused")                                   # mlx_lm.load("fused") works
"""

from __future__ import annotations

from ..backend import require_mlx

__all__ = ["finetune", "fuse", "load_adapters"]


def finetune(model, tokenizer, train_jsonl, **options) -> list[dict]:
    """Train LoRA/DoRA adapters on ``model`` in place; see :func:`mlx_slm.finetune.trainer.finetune`."""
    require_mlx("fine-tuning")
    from .trainer import finetune as run

    return run(model, tokenizer, train_jsonl, **options)


def fuse(model, **options):
    """Merge the adapters into the base (re-quantizing it); see :func:`mlx_slm.finetune.fusing.fuse`."""
    require_mlx("fusing adapters")
    from .fusing import fuse as run

    return run(model, **options)


def load_adapters(model, adapter_dir):
    """Add an adapter folder's LoRA/DoRA layers to ``model``; see :func:`mlx_slm.finetune.adapters.load_adapters`."""
    require_mlx("loading adapters")
    from .adapters import load_adapters as run

    return run(model, adapter_dir)
