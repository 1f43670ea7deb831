"""What every pruning pass shares: the numpy engine of a model, checks, writing weights back, the record."""

from __future__ import annotations

import numpy as np

from ..backend import backend_of
from ..errors import SLMError
from ..loading import model_config, set_model_config


def check_float_model(model, what: str) -> dict:
    """The model's config; one clear error if it is quantized."""
    config = model_config(model)
    if config.get("quantization"):
        raise SLMError(f"the model is already quantized; {what} the float model first, then quantize")
    return config


def stored_dtypes(model) -> dict:
    """Parameter name -> numpy dtype it is stored in (bfloat16 through ml_dtypes)."""
    if backend_of(model) == "numpy":
        return {name: value.dtype for name, value in model.weights.items()}
    from mlx.utils import tree_flatten

    from ..formats.dtypes import FLOAT_DTYPES

    return {name: FLOAT_DTYPES.get(str(value.dtype).split(".")[-1], np.dtype(np.float32))
            for name, value in tree_flatten(model.parameters())}


def write_weights(model, arrays: dict) -> None:
    """Replace parameters (name -> numpy array of unchanged shape) of a numpy or MLX model."""
    if backend_of(model) == "numpy":
        model.weights.update(arrays)
        model.drop_cache()
        return
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    from ..formats.dtypes import mlx_array

    model.update(tree_unflatten([(name, mlx_array(value)) for name, value in arrays.items()]))
    mx.eval(model.parameters())


def add_record(model, record: dict) -> None:
    """Append ``record`` to ``config["mlx_slm"]["pruning"]`` (a list: passes can follow each other)."""
    config = model_config(model)
    section = config.setdefault("mlx_slm", {})
    section.setdefault("pruning", []).append(record)
    set_model_config(model, config)


class Observers:
    """Several observers of :meth:`NumpyLlama.linear` at once."""

    def __init__(self, *observers):
        self.observers = observers

    def __call__(self, name, x):
        for observer in self.observers:
            observer(name, x)
