"""Merge LoRA / DoRA layers into their base; re-quantize a quantized base so the adapter survives.

Each adapter layer first becomes mlx-lm's own fused float layer (``layer.fuse(dequantize=True)``:
the dequantized base plus ``scale * B^T A^T``, DoRA's magnitude applied), in the
base's dtype. A float base stops there. A quantized base is stored again in its own
mode, bits and group size:

- ``rtn``: mlx-lm's ``layer.fuse()`` (what ``mlx_lm.fuse`` does): round-to-nearest of the
  fused weight. Where the adapter's change to a weight is smaller than half a
  quantization step it rounds back to the old value: the adapter is partly lost.
- ``gptq``: GPTQ (:mod:`mlx_slm.quant.gptq`) of each fused float weight, block by
  block on the numpy engine (:func:`mlx_slm.quant.sequential.sequential_quantize`).
  The target is the fused float model (the unfused adapter model's function); the
  activations are those of calibration text through the model being re-quantized:
  block i's layers see what the already re-quantized blocks < i produce, so their
  rounding compensates both their own error and the upstream one. Layers without
  adapters are not touched.
- None: the fused layers stay in float (marked unquantized in the config).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from mlx import nn
from mlx.utils import tree_unflatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear

from ..data.windows import calibration_windows
from ..errors import SLMError
from ..formats import get_format
from ..formats.dtypes import FLOAT_DTYPES
from ..model_access import model_config, set_model_config
from .adapters import adapter_layers

REQUANTIZE = ("gptq", "rtn", None)
DEFAULT_NUM_SAMPLES = 32
DEFAULT_SEQ_LEN = 256
ACTIVATIONS = ("calibration text through the model being re-quantized, block by block (blocks before the "
               "current one already re-quantized); target: the fused float weights")


def quantized_base(layer):
    """The adapter layer's base if it is quantized, else None."""
    base = layer.linear if hasattr(layer, "linear") else getattr(layer, "embedding", None)
    return base if isinstance(base, (nn.QuantizedLinear, nn.QuantizedEmbedding, QuantizedSwitchLinear)) else None


def check_gptq(model, quantized: dict, gptq_options: dict | None) -> dict:
    """GPTQ's options (defaults filled); SLMError for what it cannot re-quantize."""
    from ..models.numpy_llama import SUPPORTED
    from ..quant.methods.gptq import GPTQConfig

    model_type = model_config(model).get("model_type")
    if model_type not in SUPPORTED:
        raise SLMError(f"requantize='gptq' runs on the numpy engine, which supports {', '.join(SUPPORTED)}, "
                       f"not {model_type!r}; use requantize='rtn'")
    for path, base in quantized.items():
        if type(base) is not nn.QuantizedLinear or base.mode != "affine":
            raise SLMError(f"requantize='gptq' re-quantizes affine linear layers; {path} is a "
                           f"{type(base).__name__} in mode {base.mode!r}; use requantize='rtn'")
    return asdict(GPTQConfig.from_options(gptq_options))


def requantize_gptq(model, quantized: dict, tokens, options: dict, progress: bool) -> None:
    """Replace the fused float layers at ``quantized``'s paths by GPTQ-quantized ones in their bases' format."""
    from ..model_access import access, stored_arrays
    from ..quant.sequential import sequential_quantize
    from ..runtime import numpy_twin

    plan = {path: {"bits": base.bits, "group_size": base.group_size} for path, base in quantized.items()}
    dtypes = {path: FLOAT_DTYPES[str(base.scales.dtype).split(".")[-1]] for path, base in quantized.items()}
    chosen = sequential_quantize(numpy_twin(model), plan, tokens, "gptq", dtypes, options, progress=progress)
    affine = get_format("affine")
    access(model).quantize_affine(plan, {path: stored_arrays(affine, stored) for path, stored in chosen.items()})


def fuse(model, *, requantize: str | None = "gptq", calib=None, tokenizer=None,
         num_samples: int = DEFAULT_NUM_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN, gptq_options: dict | None = None,
         progress: bool = True):
    """Merge every LoRA/DoRA layer of ``model`` into its base, in place; return the model.

    requantize: for layers whose base is quantized, "gptq" (needs ``calib`` and
    ``tokenizer``: a .txt/.jsonl path or list of strings cut into ``num_samples``
    windows of ``seq_len`` tokens), "rtn" (as mlx_lm.fuse) or None (keep them float).
    Ignored for float bases. gptq_options: damp, block_size, act_order, grid (as quantize).
    What was done goes to ``model_config(model)["mlx_slm"]["fuse"]``.
    """
    if requantize not in REQUANTIZE:
        raise SLMError(f"requantize must be 'gptq', 'rtn' or None, not {requantize!r}")
    layers = adapter_layers(model)
    if not layers:
        raise SLMError("the model has no LoRA/DoRA layers to fuse; train some or load an adapter folder first")
    start = time.perf_counter()
    quantized = {path: base for path, layer in layers if (base := quantized_base(layer)) is not None}
    record = {"layers": len(layers), "adapter_types": sorted({type(layer).__name__ for _, layer in layers}),
              "quantized_layers": len(quantized), "requantize": requantize if quantized else "none (float base)"}
    if quantized and requantize == "gptq":
        options = check_gptq(model, quantized, gptq_options)
        tokens, record["calibration"] = calibration_windows(tokenizer, calib, num_samples, seq_len)
        record.update(gptq=options, activations=ACTIVATIONS)
    config = model_config(model)
    dequantize = not quantized or requantize != "rtn"
    model.update_modules(tree_unflatten([(path, layer.fuse(dequantize=dequantize)) for path, layer in layers]))
    if quantized and requantize == "gptq":
        requantize_gptq(model, quantized, tokens, options, progress)
    elif quantized and requantize is None:
        config["quantization"].update({path: False for path in quantized})
    record["seconds"] = round(time.perf_counter() - start, 3)
    config.setdefault("mlx_slm", {})["fuse"] = record
    set_model_config(model, config)
    return model
