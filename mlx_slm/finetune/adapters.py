"""LoRA / DoRA layers (mlx-lm's own), and adapter folders in mlx-lm's layout.

An adapter folder holds ``adapters.safetensors`` (every ``lora_a`` / ``lora_b`` and,
for DoRA, ``m``) and ``adapter_config.json`` (``fine_tune_type``, ``num_layers``,
``lora_parameters``), so ``mlx_lm.tuner.utils.load_adapters`` and ``mlx_lm.generate
--adapter-path`` read it. A training run adds ``optimizer.safetensors`` and
``training_state.json`` (step, history) to resume from. Folders are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from ..errors import SLMError
from ..io.atomic import atomic_directory

METHODS = ("lora", "dora")
ADAPTER_TYPES = (LoRALinear, DoRALinear, LoRASwitchLinear, LoRAEmbedding, DoRAEmbedding)
ADAPTERS, CONFIG, OPTIMIZER, STATE = ("adapters.safetensors", "adapter_config.json", "optimizer.safetensors",
                                      "training_state.json")


def adapter_layers(model) -> list[tuple[str, nn.Module]]:
    """(path, layer) of every LoRA / DoRA layer in ``model``."""
    return [(path, m) for path, m in model.named_modules() if isinstance(m, ADAPTER_TYPES)]


def add_adapters(model, method: str, rank: int, scale: float, dropout: float, num_layers: int, keys) -> dict:
    """Freeze ``model`` and wrap its decoder layers' linear layers in LoRA / DoRA layers (in place).

    num_layers: the last N decoder layers (-1: all). keys: layer paths inside a decoder
    layer (e.g. ``["self_attn.q_proj", "self_attn.v_proj"]``; None: every linear layer).
    Returns the adapter config (mlx-lm's ``adapter_config.json`` fields).
    """
    if method not in METHODS:
        raise SLMError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if rank < 1 or dropout < 0 or dropout >= 1:
        raise SLMError(f"need rank >= 1 and 0 <= dropout < 1, not rank {rank} and dropout {dropout}")
    if adapter_layers(model):
        raise SLMError("the model already has LoRA/DoRA layers; fuse them or load a fresh model")
    total = len(getattr(model, "layers", ()))
    if not total:
        raise SLMError(f"{type(model).__name__} exposes no decoder layers (model.layers)")
    if num_layers == 0 or num_layers < -1 or num_layers > total:
        raise SLMError(f"num_layers must be -1 (all) or 1..{total}, not {num_layers}")
    parameters = {"rank": rank, "scale": scale, "dropout": dropout, "keys": list(keys) if keys else None}
    model.freeze()
    try:
        linear_to_lora_layers(model, num_layers, parameters, use_dora=method == "dora")
    except ValueError as err:
        raise SLMError(f"cannot add {method} layers: {err}") from None
    if not adapter_layers(model):
        raise SLMError(f"no layer matches keys {parameters['keys']}; keys are paths inside a decoder layer, "
                       "e.g. self_attn.q_proj")
    return {"fine_tune_type": method, "num_layers": num_layers, "lora_parameters": parameters}


def adapter_weights(model) -> dict:
    """Name -> array of the trainable adapter parameters."""
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(folder, model, config: dict, optimizer=None, state: dict | None = None) -> Path:
    """Write ``folder`` atomically: adapters + config, and with ``optimizer``/``state`` what a resume needs."""
    with atomic_directory(folder, overwrite=True) as tmp:
        mx.save_safetensors(str(tmp / ADAPTERS), adapter_weights(model), metadata={"format": "mlx"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        if optimizer is not None:
            mx.save_safetensors(str(tmp / OPTIMIZER), dict(tree_flatten(optimizer.state)))
        if state is not None:
            (tmp / STATE).write_text(json.dumps(state, indent=1))
    return Path(folder)


def check_adapter_folder(folder) -> Path:
    folder = Path(folder)
    missing = [name for name in (ADAPTERS, CONFIG) if not (folder / name).is_file()]
    if missing:
        raise SLMError(f"{folder} is not an adapter folder: {' and '.join(missing)} missing")
    return folder


def load_adapters(model, folder):
    """Add the layers an adapter folder describes to ``model`` and load its weights (mlx-lm's loader)."""
    from mlx_lm.tuner.utils import load_adapters as mlx_lm_load_adapters

    folder = check_adapter_folder(folder)
    if adapter_layers(model):
        raise SLMError("the model already has LoRA/DoRA layers; load adapters into a fresh model")
    try:
        mlx_lm_load_adapters(model, str(folder))
    except (ValueError, KeyError, json.JSONDecodeError) as err:
        raise SLMError(f"cannot load the adapters in {folder}: {err}") from None
    model.eval()
    return model


def resume_state(folder, model, optimizer) -> dict:
    """Load a training run's adapters and optimizer state from ``folder``; return its state (step, history)."""
    folder = check_adapter_folder(folder)
    if not (folder / STATE).is_file() or not (folder / OPTIMIZER).is_file():
        raise SLMError(f"{folder} has no training state to resume from ({STATE}, {OPTIMIZER})")
    try:
        model.load_weights(list(mx.load(str(folder / ADAPTERS)).items()), strict=False)
        optimizer.state = tree_unflatten(list(mx.load(str(folder / OPTIMIZER)).items()))
        return json.loads((folder / STATE).read_text())
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        raise SLMError(f"cannot resume from {folder}: {err}") from None
