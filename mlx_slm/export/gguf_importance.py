"""Per-matrix input importance for calibrated k-quants: one pass of the float model over calibration
windows on the numpy engine (:func:`mlx_slm.quantize.layer_importance`: mean squared input per
column), keyed by GGUF tensor name. The head sees the final norm's outputs; when the head is tied,
the embedding (``token_embd.weight``) gets the head's importance, as it is quantized once for both."""

from __future__ import annotations

import dataclasses

from ..data.windows import Calibration
from ..model_access import access


def as_calibration(calibration, tokenizer) -> Calibration:
    """A :class:`Calibration`, or calibration text (a .txt/.jsonl path or a list of strings) cut with the
    default windows; the export's ``tokenizer`` where it has none."""
    if not isinstance(calibration, Calibration):
        calibration = Calibration(calibration, tokenizer)
    if calibration.tokenizer is None:
        calibration = dataclasses.replace(calibration, tokenizer=tokenizer)
    return calibration


def gguf_importance(model, calibration: Calibration, progress: bool) -> dict:
    """GGUF name (``blk.0.attn_q.weight``) -> importance [K] float64 of every float matrix the
    calibration reaches."""
    from ..quantize import layer_importance
    from .gguf import gguf_name

    tokens, _ = calibration.windows()
    view = access(model)
    importance = layer_importance(view.calibration_engine(), list(view.candidate_layers()), tokens, progress)
    return {gguf_name(f"{path}.weight"): values for path, values in importance.items()}
