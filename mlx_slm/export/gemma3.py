"""What the Core ML and Core AI exports know about Gemma 3 text models (mlx-lm's ``gemma3_text``): the model
types, the text model's resolved config and weight names, which layers slide, and the embedding scale.

A ``gemma3`` (multimodal) model exports its text model; the programs of both exporters are built from
:func:`program_config` and :func:`program_weights`, which leave a Llama-family model as it is.
"""

from __future__ import annotations

import numpy as np

from ..errors import SLMError
from ..formats.dtypes import bfloat16
from .weights import ModelWeights

GEMMA3_TYPES = ("gemma3_text", "gemma3")
MULTIMODAL_PREFIX = "language_model."  # mlx-lm's gemma3 wraps the text model under this name


def gemma3_text_config(model, config: dict) -> dict:
    """mlx-lm's resolved ``gemma3_text`` arguments (its defaults filled in), also for a ``gemma3`` model."""
    args = getattr(getattr(model, "language_model", model), "args", None)
    if args is None:
        raise SLMError(f"exporting {config.get('model_type')} needs the MLX backend (mlx-lm's gemma3_text model); "
                       "the numpy backend runs the Llama family only")
    return {**vars(args), "model_type": "gemma3_text"}


def program_config(model, config: dict) -> dict:
    """The config the program is built from: the model's own; for Gemma 3 its resolved text-model config."""
    return gemma3_text_config(model, config) if config["model_type"] in GEMMA3_TYPES else config


def program_weights(model, config: dict) -> ModelWeights:
    """The model's weights in the program's names (Gemma 3: those of its text model, a ``gemma3`` model's
    losing ``language_model.``; mlx-lm drops the vision tower when loading), each converted when read."""
    return ModelWeights(model, MULTIMODAL_PREFIX if config["model_type"] in GEMMA3_TYPES else "")


def is_sliding(config: dict, layer: int) -> bool:
    """Layer i is global when (i + 1) % sliding_window_pattern == 0, else it attends to a sliding window."""
    return (layer + 1) % int(config["sliding_window_pattern"]) != 0


def local_rope_config(config: dict) -> dict:
    """The RoPE settings of the sliding layers: base rope_local_base_freq, no scaling."""
    return {"rope_theta": config["rope_local_base_freq"]}


def embedding_scale(config: dict) -> float:
    """sqrt(hidden_size) rounded to bfloat16: the factor mlx-lm multiplies the embedding rows by."""
    return float(np.float32(np.sqrt(int(config["hidden_size"]))).astype(bfloat16))
