"""What the algorithms read from a model, on either backend: its float layers, their dtypes and weights,
and a numpy engine that runs it (the model itself, or the numpy twin of an MLX model).

Kept apart from :mod:`mlx_slm.quantize` and :mod:`mlx_slm.backend` so that quantization,
sensitivity measurement and pruning read a model the same way without importing each other.
"""

from __future__ import annotations

from .backend import backend_of
from .formats.dtypes import FLOAT_DTYPES


def candidate_layers(model) -> dict[str, tuple]:
    """Unquantized layers that could be quantized: path -> weight shape."""
    if backend_of(model) == "numpy":
        return {
            name[: -len(".weight")]: value.shape
            for name, value in model.weights.items()
            if name.endswith(".weight") and value.ndim == 2 and value.dtype in FLOAT_DTYPES.values()
        }
    return {
        path: module.weight.shape
        for path, module in model.named_modules()
        if hasattr(module, "to_quantized") and "weight" in module and module.weight.ndim == 2
    }


def weight_dtypes(model, paths) -> dict:
    """Layer path -> numpy dtype of its float weight (what its scales and biases are stored in)."""
    if backend_of(model) == "numpy":
        return {path: model.weights[f"{path}.weight"].dtype for path in paths}
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(model.parameters()))
    return {path: FLOAT_DTYPES[str(params[f"{path}.weight"].dtype).split(".")[-1]] for path in paths}


def numpy_weights(model):
    """Parameter name -> numpy array, any architecture: the numpy model's own, or an MLX model's exact
    weights converted when read (:class:`~.runtime.LazyNumpyWeights`)."""
    if backend_of(model) == "numpy":
        return model.weights
    from mlx.utils import tree_flatten

    from .runtime import LazyNumpyWeights

    return LazyNumpyWeights(dict(tree_flatten(model.parameters())))


def numpy_engine(model):
    """The NumpyLlama that computes calibration statistics: the model itself (numpy backend)
    or a twin holding an MLX model's exact weights."""
    if backend_of(model) == "numpy":
        return model
    from .runtime import numpy_twin

    return numpy_twin(model)
