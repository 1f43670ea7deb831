"""``export_coreml``: a model -> ``Name.mlpackage`` (iOS 18, stateful) + ``Name.json`` + tokenizer.

The program is written directly with coremltools' MIL Builder from the model's
own weights (no PyTorch); quantized layers keep their codes and scales (see
:mod:`.coreml_weights`). coremltools is imported only when this runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import SLMError
from ..loading import model_config
from ..models.numpy_llama import SUPPORTED
from .coreml_llama import CAUSAL_MASK, INPUT_IDS, LOGITS, LlamaProgramBuilder
from .coreml_weights import layer_record, weight_var
from .manifest import build_manifest
from .weights import AffineWeight, model_weights

PRECISIONS = ("float16",)
DEFAULT_MAX_CONTEXT = 2048


def import_coremltools():
    quiet = logging.getLogger("coremltools")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # on Linux it warns that it cannot run models; exporting needs no runtime
    try:
        import coremltools
    except ImportError:
        raise SLMError("Core ML export needs coremltools: pip install 'mlx-slm[coreml]' "
                       "(or pip install coremltools)") from None
    finally:
        quiet.setLevel(level)
    return coremltools


def resolve_max_context(config: dict, max_context: int | None) -> int:
    """The requested KV-cache length, by default min(2048, max_position_embeddings)."""
    if max_context is not None:
        return max_context
    return min(DEFAULT_MAX_CONTEXT, int(config.get("max_position_embeddings") or DEFAULT_MAX_CONTEXT))


def check_request(config: dict, max_context: int, compute_precision: str) -> None:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise SLMError(f"Core ML export supports the Llama family ({', '.join(SUPPORTED)}), "
                       f"not model type {model_type!r}")
    limit = config.get("max_position_embeddings")
    if not isinstance(max_context, int) or max_context < 1:
        raise SLMError(f"max_context must be a positive integer, not {max_context!r}")
    if limit is not None and max_context > int(limit):
        raise SLMError(f"max_context {max_context} is beyond the model's max_position_embeddings {limit}")
    if compute_precision not in PRECISIONS:
        raise SLMError(f"compute_precision must be one of {PRECISIONS}, not {compute_precision!r}")


def package_path(out_path) -> Path:
    path = Path(out_path).expanduser().resolve()
    if path.suffix != ".mlpackage":
        raise SLMError(f"the output must end in .mlpackage, not {path.name!r}")
    return path


def refuse_existing(package: Path, overwrite: bool) -> None:
    for target in (package, package.with_suffix(".json")):
        if target.exists() and not overwrite:
            raise SLMError(f"{target} already exists (pass --overwrite / overwrite=True to replace it)")


@contextmanager
def staged_outputs(package: Path, overwrite: bool):
    """Yield a temporary folder; on success move its entries beside ``package``, the package last.

    Nothing is moved if the body fails, so an interrupted export leaves no
    partial package or manifest. Tokenizer files beside the package are replaced.
    """
    refuse_existing(package, overwrite)
    package.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.name}.partial-", dir=package.parent))
    try:
        yield staging
        entries = sorted(staging.iterdir(), key=lambda entry: entry.name == package.name)
        for entry in entries:
            target = package.parent / entry.name
            if target.is_dir():  # an old package: set it aside, so the new one replaces it in one rename
                target.rename(staging / f".old-{entry.name}")
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert(ct, program, max_context: int):
    """MIL program -> ``ct.models.MLModel`` (not loaded: Linux cannot run it)."""
    return ct.convert(
        program, minimum_deployment_target=ct.target.iOS18, convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,  # keep the program's own dtypes (fp16, fp32 norms)
        inputs=[ct.TensorType(INPUT_IDS, shape=(1, ct.RangeDim(1, max_context)), dtype=np.int32),
                ct.TensorType(CAUSAL_MASK, shape=(1, 1, ct.RangeDim(1, max_context), ct.RangeDim(1, max_context)),
                              dtype=np.float16)],
        outputs=[ct.TensorType(LOGITS, dtype=np.float16)], pass_pipeline=pass_pipeline(ct), skip_model_load=True)


def pass_pipeline(ct):
    """coremltools' default passes minus transpose reduction (a third of the conversion time,
    nothing to gain: the program has one transpose per head split/merge)."""
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::reduce_transposes"])
    return pipeline


def export_coreml(model, tokenizer, out_path, max_context: int | None = None,
                  compute_precision: str = "float16", overwrite: bool = False) -> Path:
    """Write ``Name.mlpackage``, ``Name.json`` and the tokenizer files into out_path's folder.

    model: from :func:`mlx_slm.load` (MLX or numpy backend), float or affine-quantized.
    out_path: ``.../Name.mlpackage``. max_context: KV-cache length in tokens (default
    min(2048, max_position_embeddings)).
    compute_precision: "float16" (activations and KV cache; RMSNorm statistics in fp32).
    Returns the package path.
    """
    config = model_config(model)
    max_context = resolve_max_context(config, max_context)
    check_request(config, max_context, compute_precision)
    package = package_path(out_path)
    refuse_existing(package, overwrite)  # before minutes of conversion, and again before writing
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    from .. import __version__

    weights = model_weights(model)
    builder = LlamaProgramBuilder(mb, config, weights, weight_var, max_context)
    mlmodel = convert(ct, builder.program(), max_context)
    matrices = {path: w for path, w in weights.items()
                if isinstance(w, AffineWeight) or (path.endswith(".weight") and w.ndim == 2)}
    layers = [layer_record(path.removesuffix(".weight"), w) for path, w in sorted(matrices.items())]
    manifest = build_manifest(tokenizer, config, max_context, layers, __version__)
    mlmodel.short_description = f"{config.get('model_type')} language model exported by mlx_slm {__version__}"
    with staged_outputs(package, overwrite) as staging:
        mlmodel.save(str(staging / package.name))
        (staging / package.with_suffix(".json").name).write_text(json.dumps(manifest, indent=2))
        tokenizer.save_pretrained(str(staging))
    return package
