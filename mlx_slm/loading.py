"""``load``: one entry point for Hugging Face folders, Hub ids, and GGUF files.

With MLX the model is an mlx-lm ``nn.Module`` (its own architecture classes);
without it, a :class:`~mlx_slm.models.numpy_llama.NumpyLlama`. Either way the
model's full config dict is reachable with :func:`mlx_slm.model_access.model_config`.
"""

from __future__ import annotations

from pathlib import Path

from .backend import resolve_backend
from .errors import SLMError
from .formats.dtypes import mlx_array
from .io import hf
from .io.gguf import read_gguf
from .model_access import set_model_config

SOURCE_ATTRIBUTE = "_mlx_slm_source"
MLX_NATIVE_MODES = ("affine", "mxfp4", "mxfp8", "nvfp4")  # nn.quantize builds these itself


def remember_source(model, path: Path):
    """Record where ``model`` was loaded from (``save`` never writes over it); returns the model."""
    object.__setattr__(model, SOURCE_ATTRIBUTE, Path(path).expanduser().resolve())
    return model


def model_source(model) -> Path | None:
    """The file or folder ``model`` was loaded from (None for a model built otherwise)."""
    return getattr(model, SOURCE_ATTRIBUTE, None)


def sanitize_numpy_weights(config: dict, weights: dict) -> dict:
    """Drop tensors mlx-lm's Llama-family sanitize drops (rotary caches, tied heads)."""
    weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
    if config.get("tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)
    return weights


def one_line(err: Exception) -> str:
    """An exception's message on one line (MLX lists mismatched parameters one per line)."""
    return " ".join(str(err).split())


def build_mlx_model(config: dict, weights: dict):
    """An mlx-lm model for ``config`` holding the numpy ``weights`` (mlx-lm names)."""
    import mlx.core as mx
    from mlx_lm.utils import _get_classes

    try:
        model_class, args_class = _get_classes(config)
    except ValueError as err:
        raise SLMError(f"unsupported architecture: {err}") from None
    model = model_class(args_class.from_dict(config))
    arrays = {name: mlx_array(value) for name, value in weights.items()}
    if hasattr(model, "sanitize"):
        arrays = model.sanitize(arrays)
    try:
        model.load_weights(list(arrays.items()))
    except ValueError as err:
        raise SLMError(f"the weights do not fit a {config.get('model_type')} model: {one_line(err)}") from None
    mx.eval(model.parameters())
    model.eval()
    set_model_config(model, config)
    return model


def saved_modes(config: dict) -> set:
    """Every quantization ``mode`` a model config names (top level and per layer)."""
    quantization = config.get("quantization") or {}
    if not quantization:
        return set()
    top = quantization.get("mode", "affine")
    return {top} | {v.get("mode", top) for v in quantization.values() if isinstance(v, dict)}


def check_modes(config: dict, backend: str) -> set:
    """The config's quantization modes; SLMError for one this backend cannot compute."""
    from .formats import FORMATS

    modes = saved_modes(config)
    known = set(FORMATS) | (set(MLX_NATIVE_MODES) if backend == "mlx" else set())
    unknown = sorted(modes - known)
    if unknown:
        raise SLMError(f"the model is quantized in mode {unknown[0]!r}, which mlx_slm's {backend} backend does "
                       f"not know; known: {', '.join(sorted(known))}")
    return modes


def read_mlx_weights(folder: Path) -> dict:
    import mlx.core as mx

    weights = {}
    for path in hf.weight_files(folder):
        weights.update(mx.load(str(path)))
    return weights


def build_lowbit_mlx_model(folder: Path, config: dict):
    """An mlx-lm model for a folder with lut/ternary layers: affine layers through nn.quantize,
    the others as :mod:`mlx_slm.layers` modules, then the saved arrays loaded."""
    import mlx.core as mx
    from mlx_lm.utils import _get_classes

    from .layers import prepare_quantized

    try:
        model_class, args_class = _get_classes(config)
    except ValueError as err:
        raise SLMError(f"unsupported architecture: {err}") from None
    model = model_class(args_class.from_dict(config))
    weights = read_mlx_weights(folder)
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    prepare_quantized(model, config["quantization"], weights)
    model.eval()
    try:
        model.load_weights(list(weights.items()))
    except ValueError as err:
        raise SLMError(f"the weights in {folder} do not fit its config: {one_line(err)}") from None
    mx.eval(model.parameters())
    return model


def load_folder_mlx(folder: Path, lazy: bool = False):
    from mlx_lm.utils import load_model, load_tokenizer

    hf.check_weights(folder)
    config = hf.read_config(folder)
    if check_modes(config, "mlx") - set(MLX_NATIVE_MODES):
        model = build_lowbit_mlx_model(folder, config)
    else:
        try:
            model, config = load_model(folder, lazy=lazy)
        except ValueError as err:
            raise SLMError(f"cannot load {folder}: {one_line(err)}") from None
        from mlx.utils import tree_flatten

        hf.check_float(config, {k: str(v.dtype).rsplit(".", 1)[-1] for k, v in tree_flatten(model.parameters())},
                       folder)
    set_model_config(model, config)
    return model, read_tokenizer(folder, lambda: load_tokenizer(folder, eos_token_ids=config.get("eos_token_id")))


def load_folder_numpy(folder: Path):
    from transformers import AutoTokenizer

    from .models.numpy_llama import NumpyLlama

    config = hf.read_config(folder)
    check_modes(config, "numpy")
    weights = sanitize_numpy_weights(config, hf.read_weights(folder))
    model = NumpyLlama(config, weights)
    if not config.get("quantization"):  # MLX checks names and shapes as it loads; here it is done by hand
        hf.check_float(config, {name: value.dtype.name for name, value in weights.items()}, folder)
        hf.check_shapes(config, {name: value.shape for name, value in weights.items()}, folder)
    return model, read_tokenizer(folder, lambda: AutoTokenizer.from_pretrained(str(folder)))


def read_tokenizer(folder: Path, read):
    """``read()``'s tokenizer, or one SLMError when the folder's tokenizer files are missing or unreadable
    (transformers raises a ValueError or OSError of several lines)."""
    try:
        return read()
    except (ValueError, OSError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SLMError(f"cannot read the tokenizer in {folder} (tokenizer.json or tokenizer.model "
                       f"missing or broken?): {first}") from None


def load(source, backend: str | None = None, dtype: str = "float16", progress: bool = True, lazy: bool = False):
    """Load a model and its tokenizer.

    source: a Hugging Face / MLX folder, a Hub repo id (``org/name``), or a ``.gguf`` file.
    backend: "mlx" or "numpy" (default: MLX when importable).
    dtype: float dtype for tensors decoded from GGUF ("float16", "bfloat16", "float32").
    lazy: MLX folders only: read each tensor from its file when first computed with, not now, so
    a method that works block by block never holds the whole float model (the files must stay
    unchanged while the model is used).
    Returns ``(model, tokenizer)``.
    """
    backend = resolve_backend(backend)
    path = Path(str(source)).expanduser()
    if path.suffix.lower() == ".gguf" or path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SLMError(f"{path} is a file but not a .gguf model")
        from .models.numpy_llama import NumpyLlama, check_model_type

        config, weights, tokenizer = read_gguf(path, dtype=dtype, progress=progress,
                                               check=check_model_type if backend == "numpy" else None)
        if backend == "numpy":
            return remember_source(NumpyLlama(config, weights), path), tokenizer
        from mlx_lm.tokenizer_utils import TokenizerWrapper

        model = build_mlx_model(config, weights)
        return remember_source(model, path), TokenizerWrapper(tokenizer, eos_token_ids=[config["eos_token_id"]]
                                                              if "eos_token_id" in config else None)
    folder = hf.resolve(source)
    model, tokenizer = load_folder_numpy(folder) if backend == "numpy" else load_folder_mlx(folder, lazy)
    return remember_source(model, folder), tokenizer
