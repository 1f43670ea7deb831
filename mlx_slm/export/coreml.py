"""``export_coreml``: a model -> ``Name.mlpackage`` (iOS 18, stateful) + ``Name.json`` + tokenizer.

The program is written directly with coremltools' MIL Builder from the model's
own weights (no PyTorch); quantized layers keep their codes and scales (see
:mod:`.coreml_weights`). coremltools is imported only when this runs.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import SLMError
from ..loading import model_source
from ..model_access import model_config
from ..models.numpy_llama import SUPPORTED
from .coreml_gemma3 import Gemma3ProgramBuilder
from .coreml_llama import CAUSAL_MASK, INPUT_IDS, LOGITS, POSITION, LlamaProgramBuilder
from .coreml_options import CoreMLOptions
from .coreml_weights import layer_record, weight_var
from .gemma3 import GEMMA3_TYPES, program_config, program_weights
from .manifest import build_manifest
from .package import check_model_type, check_request, package_path, refuse_existing, resolve_max_context, staged_outputs

EXPORTERS_NAME = "co.huggingface.exporters.name"  # swift-transformers' LanguageModel.modelName reads it
BUILDERS = {**{model_type: LlamaProgramBuilder for model_type in SUPPORTED},
            **{model_type: Gemma3ProgramBuilder for model_type in GEMMA3_TYPES}}


@contextmanager
def quiet_coremltools():
    """coremltools logs errors only inside the block, and its pass-pipeline bars show only on a terminal
    (it calls tqdm without ``disable``, so piped logs would get carriage-return noise)."""
    import sys

    import tqdm

    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    pipeline = sys.modules.get("coremltools.converters.mil.mil.passes.pass_pipeline")
    bar = getattr(pipeline, "tqdm", None)
    if bar is not None:
        pipeline.tqdm = functools.partial(tqdm.tqdm, disable=None)
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is not None:
            pipeline.tqdm = bar


def import_coremltools():
    try:
        with quiet_coremltools():  # on Linux it warns that it cannot run models; exporting needs no runtime
            import coremltools
    except ImportError:
        raise SLMError("Core ML export needs coremltools: pip install 'mlx-slm[coreml]' "
                       "(or pip install coremltools)") from None
    return coremltools


def input_types(ct, max_context: int, options: CoreMLOptions) -> list:
    """The inputs' shapes as Core ML records them. Ranged: inputIds [1, 1..C], causalMask [1, 1, 1..C, 2..C+1].
    Enumerated: inputIds [1, T] for T in query_lengths (fixed when there is one), position [1]."""
    if options.shapes == "ranged":
        return [ct.TensorType(INPUT_IDS, shape=(1, ct.RangeDim(1, max_context)), dtype=np.int32),
                ct.TensorType(CAUSAL_MASK, shape=(1, 1, ct.RangeDim(1, max_context), ct.RangeDim(2, max_context + 1)),
                              dtype=np.float16)]
    shapes = [(1, length) for length in options.query_lengths]
    ids_shape = ct.EnumeratedShapes(shapes=shapes, default=shapes[0]) if len(shapes) > 1 else shapes[0]
    return [ct.TensorType(INPUT_IDS, shape=ids_shape, dtype=np.int32),
            ct.TensorType(POSITION, shape=(1,), dtype=np.int32)]


def convert(ct, program, max_context: int, compute_precision: str, options: CoreMLOptions):
    """MIL program -> ``ct.models.MLModel`` (not loaded: Linux cannot run it); logits in the compute dtype."""
    with quiet_coremltools():  # a float32 program would log one warning per weight kept unfolded
        return ct.convert(
            program, minimum_deployment_target=ct.target.iOS18, convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32,  # keep the program's own dtypes (fp16, fp32 norms)
            inputs=input_types(ct, max_context, options),
            outputs=[ct.TensorType(LOGITS, dtype=np.dtype(compute_precision).type)],
            pass_pipeline=pass_pipeline(ct, compute_precision), skip_model_load=True)


def pass_pipeline(ct, compute_precision: str):
    """coremltools' default passes minus transpose reduction (a third of the conversion time,
    nothing to gain: the program has one transpose per head split/merge).

    For float32 programs constant folding is limited to scalars: folding ``cast(fp16 weight)`` would
    store every float weight again as fp32.
    """
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::reduce_transposes"])
    if compute_precision == "float32":
        pipeline.set_options("common::const_elimination", {"skip_const_by_size": "0"})
    return pipeline


def hub_name(model, config: dict) -> str | None:
    """The Hugging Face repo id the model came from: the ``models--org--name`` folder of a Hub download,
    else config.json's ``_name_or_path`` when it reads ``org/name``; None when neither says."""
    source = model_source(model)
    for part in () if source is None else Path(source).parts:
        if part.startswith("models--") and part.count("--") == 2:
            return part.removeprefix("models--").replace("--", "/")
    name = config.get("_name_or_path")
    return name if isinstance(name, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def export_coreml(model, tokenizer, out_path, max_context: int | None = None,
                  compute_precision: str = "float16", overwrite: bool = False, name: str | None = None,
                  options: CoreMLOptions | None = None) -> Path:
    """Write ``Name.mlpackage``, ``Name.json`` and the tokenizer files into out_path's folder.

    model: from :func:`mlx_slm.load` (MLX or numpy backend), float or quantized (affine, lut, ternary).
    out_path: ``.../Name.mlpackage``. max_context: KV-cache length in tokens (default
    min(2048, max_position_embeddings)).
    compute_precision: "float16" (activations and KV cache; RMSNorm statistics in fp32) or
    "float32" (activations, attention and logits in fp32; weights and the KV-cache states stay
    fp16 or compressed).
    name: the metadata ``co.huggingface.exporters.name``, the Hub repo swift-transformers fetches
    config and tokenizer from when the app passes no tokenizer (default: :func:`hub_name`, else the
    package's name).
    options: :class:`~.coreml_options.CoreMLOptions`, the shapes (ranged for swift-transformers, or
    enumerated query lengths for the Neural Engine) and logits (every position or the last) the program
    takes and returns; the manifest records them with the compute units they suit.
    Returns the package path.
    """
    config = model_config(model)
    check_model_type(config, "Core ML")
    text_config = program_config(model, config)
    max_context = resolve_max_context(text_config, max_context)
    check_request(text_config, max_context, compute_precision)
    options = (options or CoreMLOptions()).check(max_context)
    package = package_path(out_path)
    inputs = [model_source(model)]
    refuse_existing(package, overwrite, inputs)  # before minutes of conversion, and again before writing
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    from .. import __version__

    weights = program_weights(model, config)
    builder = BUILDERS[config["model_type"]](mb, text_config, weights, weight_var, max_context, compute_precision,
                                             options)
    mlmodel = convert(ct, builder.program(), max_context, compute_precision, options)
    matrices = [key for key in sorted(weights)
                if weights.quantized(key) or (key.endswith(".weight") and len(weights.shape(key)) == 2)]
    layers = [layer_record(key.removesuffix(".weight"), weights[key]) for key in matrices]  # one layer at a time
    manifest = {**build_manifest(tokenizer, config, max_context, layers, __version__), **options.manifest()}
    mlmodel.short_description = f"{config.get('model_type')} language model exported by mlx_slm {__version__}"
    mlmodel.user_defined_metadata[EXPORTERS_NAME] = name or hub_name(model, config) or package.stem
    with staged_outputs(package, overwrite, inputs) as staging:
        mlmodel.save(str(staging / package.name))
        (staging / package.with_suffix(".json").name).write_text(json.dumps(manifest, indent=2))
        tokenizer.save_pretrained(str(staging))
    return package
