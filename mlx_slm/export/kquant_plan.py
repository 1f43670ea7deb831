"""Which GGUF type each matrix gets under a k-quant preset: llama.cpp's ``llama_model_quantize`` rules
(src/llama-quant.cpp, ``llama_tensor_get_type``) for the llama-family models this exporter writes (no
experts, not Falcon).

- ``q4_k_m``: Q4_K, but the output head (the embedding when tied) Q6_K, and ``attn_v`` / ``ffn_down``
  Q6_K in the layers where llama.cpp's ``use_more_bits`` holds (the first and last eighth of the
  blocks, and every third one between).
- ``q3_k_m``: Q3_K, but the head Q6_K, ``attn_v`` Q5_K in blocks 0-1 and Q4_K after, ``ffn_down``
  Q5_K in the first sixteenth of the blocks and Q4_K after, ``attn_output`` Q4_K.
- ``q2_k`` .. ``q6_k``: every matrix that one type (llama.cpp's ``--pure``).

A matrix whose rows are not a multiple of 256 weights falls back as llama.cpp's does: the head to
Q8_0; Q2_K/Q3_K to Q4_0, Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0; F16 if not a multiple of 32 either.

Instead of a preset, a plan may name every matrix's type (``{"blk.0.attn_q.weight": "Q4_0", ...}``, e.g.
the types of a file llama.cpp's quantizer wrote, for a comparison at the same size): :func:`check_types`.
Besides the presets' types it may name IQ4_NL (:mod:`.iq4_nl`: 32-weight blocks on a non-uniform grid,
Q4_0's size).
"""

from __future__ import annotations

import re

from ..errors import SLMError
from .kquant_blocks import KINDS, SUPER

PRESETS = {"q4_k_m": ("Q4_K", 15), "q3_k_m": ("Q3_K", 12), "q2_k": ("Q2_K", 10), "q3_k": ("Q3_K", 11),
           "q4_k": ("Q4_K", 14), "q5_k": ("Q5_K", 16), "q6_k": ("Q6_K", 18)}  # -> (base type, llama.cpp file type)
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
LEGACY_BLOCK = 32  # weights per Q4_0/Q5_0/Q5_1/Q8_0/IQ4_NL block
ROW_MULTIPLE = {**{kind: SUPER for kind in KINDS}, "F16": 1, "F32": 1,
                **{kind: LEGACY_BLOCK for kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL")}}


def check_preset(preset):
    """The preset's canonical (lower-case) name, or a per-tensor plan with upper-case types; SLMError
    for an unknown preset or type."""
    if isinstance(preset, dict):
        plan = {name: str(kind).upper() for name, kind in preset.items()}
        unknown = sorted({kind for kind in plan.values() if kind not in ROW_MULTIPLE})
        if unknown:
            raise SLMError(f"a per-tensor plan's types must be among {', '.join(ROW_MULTIPLE)}, not {unknown[0]!r}")
        return plan
    if not isinstance(preset, str) or preset.lower() not in PRESETS:
        raise SLMError(f"k-quant preset must be one of {', '.join(PRESETS)} (or a dict of per-tensor types), "
                       f"not {preset!r}")
    return preset.lower()


def check_types(plan: dict, widths: dict) -> dict:
    """GGUF name -> type of every matrix of ``widths`` (GGUF name -> row width) from a per-tensor plan;
    SLMError for a matrix the plan misses, a name that is no matrix, or a row the type's blocks do not divide."""
    missing, extra = sorted(set(widths) - set(plan)), sorted(set(plan) - set(widths))
    if missing or extra:
        raise SLMError(f"the per-tensor plan {'misses ' + missing[0] if missing else 'names ' + extra[0]} "
                       f"({'a matrix of the model' if missing else 'no matrix of the model'})")
    for name, width in widths.items():
        if width % ROW_MULTIPLE[plan[name]]:
            raise SLMError(f"{name}: {plan[name]} needs rows of a multiple of {ROW_MULTIPLE[plan[name]]} weights, "
                           f"not {width}")
    return {name: plan[name] for name in widths}


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the blocks that get more bits: first and last eighth, every third between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def preset_kind(name: str, preset: str, layers: int, tied: bool) -> str:
    """The GGUF type of matrix ``name`` (``blk.3.attn_v.weight``) before any shape fallback."""
    base = PRESETS[preset][0]
    if preset not in ("q4_k_m", "q3_k_m"):
        return base
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q6_K"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if match is None:
        return base
    layer, role = int(match.group(1)), match.group(2)
    if preset == "q4_k_m":
        return "Q6_K" if role in ("attn_v", "ffn_down") and use_more_bits(layer, layers) else base
    if role == "attn_v":
        return "Q5_K" if layer < 2 else "Q4_K"
    if role == "ffn_down":
        return "Q5_K" if layer < layers // 16 else "Q4_K"
    return "Q4_K" if role == "attn_output" else base


def matrix_kind(name: str, width: int, preset: str, layers: int, tied: bool) -> str:
    """The GGUF type matrix ``name`` with rows of ``width`` weights is written in (with the fallbacks)."""
    kind = preset_kind(name, preset, layers, tied)
    if width % SUPER == 0:
        return kind
    head = name == "output.weight" or (tied and name == "token_embd.weight")
    kind = "Q8_0" if head else FALLBACK[kind]
    return kind if width % LEGACY_BLOCK == 0 else "F16"
