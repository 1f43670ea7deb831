"""The one place that knows how a model holds its arrays, so that nothing else compares backend names.

A numpy model (:class:`~mlx_slm.models.numpy_llama.NumpyLlama`) keeps a flat dict ``weights`` of
numpy arrays and its config as ``model.config``; an MLX model (an mlx-lm ``nn.Module``) keeps a tree
of MLX arrays and, since ``nn.Module`` would take a dict attribute for parameters, its config as a
plain attribute. :func:`access` returns the matching view; every caller reads config, arrays and
dtypes, writes float or quantized layers back, and gets a numpy engine through it.

Arrays handed in are numpy (bfloat16 through ml_dtypes); names are the saved parameter names
(``model.layers.0.self_attn.q_proj.weight``); a layer path is a name without its suffix.
"""

from __future__ import annotations

import copy

import numpy as np
from tqdm import tqdm

from .backend import backend_of, require_mlx
from .errors import MLXRequiredError, SLMError
from .formats import get_format
from .formats.dtypes import FLOAT_DTYPES, exact_numpy, mlx_array
from .progress import hidden

CONFIG_ATTRIBUTE = "slm_config"


def flat_layers(chosen: dict) -> dict:
    """Parameter name -> array for layers ``chosen`` (path -> {suffix: array})."""
    return {f"{path}.{suffix}": array for path, arrays in chosen.items() for suffix, array in arrays.items()}


def spilled(chosen: dict, read) -> dict:
    """:func:`flat_layers` of ``chosen`` written to a temporary file and read back by ``read``
    (:func:`~mlx_slm.io.safetensors_np.spill`)."""
    from .io import safetensors_np

    return safetensors_np.spill(flat_layers(chosen), read)


def stored_arrays(weight_format, stored) -> dict:
    """suffix -> array for a layer's packed arrays (absent optional arrays dropped)."""
    return {suffix: array for suffix, array in zip(weight_format.stored, stored) if array is not None}


class NumpyModel:
    """A NumpyLlama: arrays in ``model.weights``, float32 dequantizations cached beside them."""

    trains = False

    def __init__(self, model):
        self.model = model

    def config(self) -> dict | None:
        return self.model.config

    def set_config(self, config: dict) -> None:
        self.model.config = config

    def arrays(self) -> dict:
        """Parameter name -> array, as saved."""
        return self.model.parameters_numpy()

    def dtypes(self) -> dict:
        """Parameter name -> numpy dtype."""
        return {name: value.dtype for name, value in self.model.weights.items()}

    def candidate_layers(self) -> dict[str, tuple]:
        """Unquantized layers that could be quantized: path -> weight shape."""
        return {name[: -len(".weight")]: value.shape for name, value in self.model.weights.items()
                if name.endswith(".weight") and value.ndim == 2 and value.dtype in FLOAT_DTYPES.values()}

    def numpy_weights(self) -> dict:
        """Parameter name -> numpy array, any architecture (no engine needed)."""
        return self.model.weights

    def numpy_engine(self):
        """The NumpyLlama computing calibration statistics: the model itself."""
        return self.model

    def calibration_engine(self, cpu_engine: str | None = None):
        """The engine calibrated methods observe: the model itself (its ``backend`` is "numpy")."""
        return self.model

    def write(self, arrays: dict, spill: bool = False) -> None:
        """Replace parameters (name -> numpy array of unchanged shape and dtype); the float32 copies
        of the layers they belong to are dropped, the other layers' kept. ``spill``: the model reads the
        new arrays from a temporary file (:func:`~mlx_slm.io.safetensors_np.spill`) instead of holding
        them, so a pass that rewrites every layer (pruning) does not hold the whole new model."""
        if arrays:
            from .io import safetensors_np

            self.replace_arrays(safetensors_np.spill(arrays) if spill else arrays)
            self.model.drop_cache(sorted({name.rsplit(".", 1)[0] for name in arrays}))

    def replace_arrays(self, arrays: dict) -> None:
        """Put ``arrays`` (name -> numpy array) in the model's weights; a replaced tensor's file pages
        (a memory-mapped safetensors view) are given back, so a pass that rewrites every layer holds its
        new arrays, not the old ones' pages too (read again, they come back from the file)."""
        from .io import safetensors_np

        weights = self.model.weights
        for name, value in arrays.items():
            if name in weights:
                safetensors_np.release(weights[name])
            weights[name] = value

    def store_layers(self, plan: dict, chosen: dict, default_format: str, spill: bool = False) -> None:
        """Make the layers of ``chosen`` (path -> {suffix: array}, packed in the format ``plan[path]``
        names, else ``default_format``) quantized layers; the numpy model keeps them as arrays.
        ``spill``: as in :meth:`write`, so a pass that quantizes block by block holds no block's codes."""
        self.replace_arrays(spilled(chosen, None) if spill else flat_layers(chosen))
        self.model.drop_cache(list(chosen))

    def round_affine(self, plan: dict, progress: bool) -> None:
        """Affine round to nearest of every planned layer (``plan``: path -> {bits, group_size} or None)."""
        affine = get_format("affine")
        todo = [(path, settings) for path, settings in plan.items() if settings is not None]
        chosen = {path: stored_arrays(affine, affine.pack(self.model.weights[f"{path}.weight"], **settings))
                  for path, settings in tqdm(todo, desc="quantizing", disable=hidden(progress))}
        self.store_layers(plan, chosen, "affine")

    def release(self, paths) -> None:
        """Nothing to release: the numpy engine is the model."""

    def save_weights(self, path, metadata: dict, release: bool = False) -> None:
        """Write the weights to one safetensors file, a tensor at a time; each memory-mapped tensor's
        pages are given back once written (read again, they come back from the file), so a saved model
        does not stay in memory beside what comes next. ``release`` changes nothing here: the model
        stays usable."""
        from .io import safetensors_np

        arrays = self.arrays()

        def tensors():
            for name in sorted(arrays):
                yield name, arrays[name]
                safetensors_np.release(arrays[name])

        layout = {name: (value.dtype, value.shape) for name, value in arrays.items()}
        safetensors_np.save_stream(path, layout, tensors(), metadata=metadata)

    def replace(self, config: dict, weights: dict):
        """Make the model the model of ``config`` and ``weights``, in place."""
        type(self.model).__init__(self.model, config, weights)
        return self.model


class MLXModel(NumpyModel):
    """An mlx-lm ``nn.Module``; its numpy engine is a twin holding the same arrays."""

    trains = True

    def __init__(self, model):
        super().__init__(model)
        self._engine = None

    def config(self) -> dict | None:
        return getattr(self.model, CONFIG_ATTRIBUTE, None)

    def set_config(self, config: dict) -> None:
        object.__setattr__(self.model, CONFIG_ATTRIBUTE, config)

    def arrays(self) -> dict:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.model.parameters()))

    def dtypes(self) -> dict:
        names = {name: str(value.dtype).split(".")[-1] for name, value in self.arrays().items()}
        return {name: FLOAT_DTYPES.get(dtype) or np.dtype(dtype) for name, dtype in names.items()}

    def candidate_layers(self) -> dict[str, tuple]:
        return {path: module.weight.shape for path, module in self.model.named_modules()
                if hasattr(module, "to_quantized") and "weight" in module and module.weight.ndim == 2}

    def numpy_weights(self) -> dict:
        """The model's exact weights, each converted to numpy when read."""
        from .runtime import LazyNumpyWeights

        return LazyNumpyWeights(self.arrays())

    def calibration_engine(self, cpu_engine: str | None = None):
        """The engine calibrated methods observe, as :func:`choose_engine` picks it (``cpu_engine``: the
        preference on a CPU): the numpy engine (:meth:`numpy_engine`) or an
        :class:`~mlx_slm.calib.mlx_engine.MLXEngine` running the model's own blocks (made once per
        access); its ``backend`` names which ("numpy" or "mlx")."""
        if choose_engine(self.model, cpu_engine) == "numpy":
            return self.numpy_engine()
        if getattr(self._engine, "backend", None) != "mlx":
            from .calib.mlx_engine import MLXEngine

            self._engine = MLXEngine(self.model, self.config())
        return self._engine

    def numpy_engine(self):
        """A NumpyLlama twin holding the model's exact weights (made once per access)."""
        if getattr(self._engine, "backend", None) != "numpy":
            from .runtime import numpy_twin

            self._engine = numpy_twin(self.model)
        return self._engine

    def write(self, arrays: dict, spill: bool = False) -> None:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        from .io import safetensors_np

        if arrays:
            new = safetensors_np.spill(arrays, mx.load) if spill else {k: mlx_array(v) for k, v in arrays.items()}
            self.model.update(tree_unflatten(list(new.items())))

    def store_layers(self, plan: dict, chosen: dict, default_format: str, spill: bool = False) -> None:
        """Layers of a format MLX builds itself (its row has no ``empty`` placeholders: affine) become
        ``nn.QuantizedLinear``/``QuantizedEmbedding`` holding ``chosen``'s arrays; other formats become
        the project's low-bit modules. ``spill``: they hold lazy MLX arrays read from a temporary file
        (as in :meth:`write`), not the arrays themselves."""
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        from .layers import lowbit_module

        if spill:
            read = spilled(chosen, mx.load)
            chosen = {path: {suffix: read[f"{path}.{suffix}"] for suffix in arrays} for path, arrays in chosen.items()}
        formats = {path: plan[path].get("format", default_format) for path in chosen}
        affine = {path: plan[path] for path in chosen if get_format(formats[path]).empty is None}  # MLX's own
        if affine:
            self.quantize_affine(affine, {path: chosen[path] for path in affine})
        modules = dict(self.model.named_modules())
        swapped = [(path, lowbit_module(formats[path], plan[path], arrays, modules[path]))
                   for path, arrays in chosen.items() if path not in affine]
        if swapped:
            self.model.update_modules(tree_unflatten(swapped))

    def round_affine(self, plan: dict, progress: bool) -> None:
        """``nn.quantize`` (what ``mlx_lm.convert -q`` stores)."""
        import mlx.core as mx

        self.quantize_affine(plan)
        mx.eval(self.model.parameters())

    def quantize_affine(self, plan: dict, chosen: dict | None = None) -> None:
        """``nn.quantize`` the layers of ``plan`` (path -> {bits, group_size} or None); then, if given,
        overwrite their arrays with ``chosen`` (path -> {suffix: array}) before anything evaluates the
        values ``nn.quantize`` computed lazily."""
        from mlx import nn
        from mlx.utils import tree_unflatten

        def predicate(path, module):
            settings = plan.get(path)
            return False if settings is None else {"bits": settings["bits"], "group_size": settings["group_size"],
                                                   "mode": "affine"}

        nn.quantize(self.model, class_predicate=predicate)
        if chosen:
            self.model.update(tree_unflatten([(f"{path}.{suffix}", mlx_array(array))
                                              for path, arrays in chosen.items() for suffix, array in arrays.items()]))

    def release(self, paths) -> None:
        """Drop the engine's references to these layers' float weights (they were just quantized)."""
        if self._engine is not None:  # deleted, not popped: an MLX model's twin converts what it returns
            weights = self._engine.weights
            for name in (f"{path}.weight" for path in paths):
                if name in weights:
                    del weights[name]

    def save_weights(self, path, metadata: dict, release: bool = False) -> None:
        """Write the weights to one safetensors file, a tensor at a time. ``release``: take each array out
        of the model (an empty array of its dtype stays in its place) and free it once written, so a
        model read with ``lazy=True`` is never whole in memory; the model cannot compute afterwards."""
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        from .io import safetensors_np

        arrays = self.arrays()
        layout = {name: (dtype, arrays[name].shape) for name, dtype in self.dtypes().items()}

        def tensors():
            for name in sorted(arrays):
                value = arrays.pop(name)
                if release:
                    self.model.update(tree_unflatten([(name, mx.zeros((0,), value.dtype))]))
                yield name, exact_numpy(value)
                del value
                if release:
                    mx.clear_cache()

        safetensors_np.save_stream(path, layout, tensors(), metadata=metadata)

    def replace(self, config: dict, weights: dict):
        from .loading import build_mlx_model

        rebuilt = build_mlx_model(config, weights)
        dict.clear(self.model)  # nn.Module is a dict of its children and arrays
        dict.update(self.model, rebuilt)
        self.model.__dict__.update(rebuilt.__dict__)
        return self.model


def access(model) -> NumpyModel:
    """The view of ``model`` matching how it holds its arrays."""
    return NumpyModel(model) if backend_of(model) == "numpy" else MLXModel(model)


ENGINES = ("numpy", "mlx")


def choose_engine(model, cpu_engine: str | None = None) -> str:
    """The engine that computes with ``model`` for evaluation and calibration: "numpy" or "mlx".

    A numpy model has only the numpy engine; on a GPU, MLX computes. On a CPU, ``cpu_engine``
    decides ("numpy" for the models the numpy engine runs), and by default Llama-family models run
    on the numpy engine (MLX's CPU backend
    computes exp() in scalar code, ~70M/s, which makes softmax and SiLU cost more than the
    matmuls; numpy's vectorized exp and bundled OpenBLAS do not) and every other architecture on
    MLX, with mlx-lm's own model class (the numpy engine runs the Llama family only).
    """
    if cpu_engine not in (None, *ENGINES):
        raise SLMError(f"cpu_engine must be 'numpy' or 'mlx', not {cpu_engine!r}")
    if backend_of(model) == "numpy":
        return "numpy"
    from .models.numpy_llama import SUPPORTED
    from .runtime import computes_on_cpu

    if not computes_on_cpu() or cpu_engine == "mlx":
        return "mlx"
    return "numpy" if model_config(model).get("model_type") in SUPPORTED else "mlx"


def model_config(model) -> dict:
    """The Hugging Face / mlx-lm config dict the model was built from (a copy)."""
    config = access(model).config()
    if config is None:
        raise SLMError("this model was not loaded by mlx_slm.load: its config is unknown")
    return copy.deepcopy(config)


def set_model_config(model, config: dict) -> None:
    access(model).set_config(config)


def require_training(feature: str, *models,
                     reason: str = "training does not run on the numpy fallback") -> None:
    """One clear error unless every model can train: MLX importable and each model an MLX model (the
    numpy fallback computes but has no autograd). ``reason`` says why the feature needs MLX models."""
    require_mlx(feature)
    if not all(access(model).trains for model in models):
        raise MLXRequiredError(feature, f"{reason} (load the model with backend='mlx')")


def float_dtypes(model) -> dict:
    """Parameter name -> numpy dtype of every floating-point parameter."""
    return {name: dtype for name, dtype in access(model).dtypes().items() if dtype in FLOAT_DTYPES.values()}


def weight_dtypes(model, paths) -> dict:
    """Layer path -> numpy dtype of its float weight (what its scales and biases are stored in)."""
    dtypes = access(model).dtypes()
    return {path: dtypes[f"{path}.weight"] for path in paths}
