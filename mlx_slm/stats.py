"""Size and bits per weight of a model's parameters."""

from __future__ import annotations

from .formats import get_format
from .model_access import access, model_config
from .qconfig import saved_layer_params


def weight_stats(model) -> dict:
    """Parameter bytes, and bits per weight over the matrices (linear + embedding).

    Returns ``{"size_bytes", "bpw", "matrix_weights", "quantized_layers"}``. bpw counts
    every stored array of a quantized layer (packed codes, scales, biases, palettes);
    float matrices count their dtype's bits.
    """
    arrays = access(model).arrays()
    quantization = model_config(model).get("quantization") or {}
    bits_total = weights_total = quantized = 0
    for name, array in arrays.items():
        if not name.endswith(".weight") or len(array.shape) != 2:
            continue
        path = name[: -len(".weight")]
        if "int" in str(array.dtype):
            bits, group_size, mode = saved_layer_params(quantization, path)
            weight_format = get_format(mode)
            stored = {suffix: arrays.get(f"{path}.{suffix}") for suffix in weight_format.stored}
            rows, width = weight_format.layer_shape(stored, bits, group_size)
            bits_total += 8 * sum(a.nbytes for a in stored.values() if a is not None)
            weights_total += rows * width
            quantized += 1
        else:
            bits_total += array.nbytes * 8
            weights_total += array.size
    return {
        "size_bytes": int(sum(a.nbytes for a in arrays.values())),
        "bpw": bits_total / weights_total if weights_total else 0.0,
        "matrix_weights": int(weights_total),
        "quantized_layers": quantized,
    }
