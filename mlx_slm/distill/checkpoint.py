"""Training checkpoints: the student's parameters, the optimizer state and the step, written atomically.

``<dir>/step-000120/`` holds ``model.safetensors``, ``optimizer.safetensors`` and
``state.json``; the newest complete one is what a resumed run starts from.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import SLMError
from ..io.atomic import atomic_directory


def save_checkpoint(folder, step: int, model, optimizer, state: dict) -> Path:
    target = Path(folder) / f"step-{step:06d}"
    with atomic_directory(target, overwrite=True) as tmp:
        mx.save_safetensors(str(Path(tmp) / "model.safetensors"), dict(tree_flatten(model.parameters())))
        mx.save_safetensors(str(Path(tmp) / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        (Path(tmp) / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    return target


def latest_checkpoint(folder) -> Path | None:
    done = sorted(p for p in Path(folder).glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def load_checkpoint(folder, model, optimizer) -> dict:
    """Restore the newest checkpoint in ``folder`` into model and optimizer; return its state."""
    found = latest_checkpoint(folder)
    if found is None:
        raise SLMError(f"no checkpoint to resume from in {folder}")
    try:
        model.update(tree_unflatten(list(mx.load(str(found / "model.safetensors")).items())))
        optimizer.state = tree_unflatten(list(mx.load(str(found / "optimizer.safetensors")).items()))
        return json.loads((found / "state.json").read_text())
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        raise SLMError(f"cannot resume from {found}: {err}") from None
