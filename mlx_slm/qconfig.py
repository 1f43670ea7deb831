"""Per-layer quantization settings: global -> by layer type -> by layer name.

A config (dict, or a YAML/JSON file) looks like::

    bits: 4               # optional: overrides the call's bits / group_size
    group_size: 64
    by_type:              # "linear", "embedding", or a layer's own name
      embedding: {format: affine, bits: 8, group_size: 64}
      down_proj: {bits: 6}
    by_name:              # exact paths or fnmatch patterns, applied in order
      lm_head: fp16       # fp16 / keep / false: leave the layer unquantized
      "model.layers.0.*": {bits: 8, group_size: 32}
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from .errors import SLMError

KEEP_WORDS = {"fp16", "keep", "none", "float16", "bf16", "float"}
TOP_KEYS = {"bits", "group_size", "by_type", "by_name"}
SETTING_KEYS = {"bits", "group_size", "format"}


def read_config_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SLMError(f"no such quantization config file: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text) or {}
        import yaml

        return yaml.safe_load(text) or {}
    except Exception as err:
        mark = getattr(err, "problem_mark", None)  # YAML errors: "line L, column C: problem"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise SLMError(f"cannot parse quantization config {path}: {where}{problem}") from None


def is_keep(value) -> bool:
    return value is False or value is None or (isinstance(value, str) and value.lower() in KEEP_WORDS)


def check_config(config: dict) -> dict:
    if not isinstance(config, dict):
        raise SLMError("a quantization config must be a mapping")
    unknown = set(config) - TOP_KEYS
    if unknown:
        raise SLMError(f"unknown quantization config keys {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    for section in ("by_type", "by_name"):
        for key, value in (config.get(section) or {}).items():
            if is_keep(value):
                continue
            if not isinstance(value, dict) or set(value) - SETTING_KEYS:
                raise SLMError(
                    f"{section}.{key} must be 'fp16' or a mapping of {sorted(SETTING_KEYS)}, not {value!r}"
                )
    return config


def layer_kind(path: str) -> str:
    return "embedding" if path.split(".")[-1] in ("embed_tokens", "wte", "tok_embeddings") else "linear"


def resolve_layer(path: str, config: dict, bits: int, group_size: int) -> dict | None:
    """``{"bits", "group_size"}`` (plus ``"format"`` if the config names one) for the layer at
    ``path``, or None to keep it unquantized."""
    settings: dict | None = {"bits": config.get("bits", bits), "group_size": config.get("group_size", group_size)}
    by_type = config.get("by_type") or {}
    matches = [by_type[k] for k in (layer_kind(path), path.split(".")[-1]) if k in by_type]
    matches += [v for pattern, v in (config.get("by_name") or {}).items()
                if pattern == path or fnmatch.fnmatchcase(path, pattern)]
    for value in matches:
        settings = None if is_keep(value) else {**(settings or {"bits": bits, "group_size": group_size}), **value}
    return settings


def saved_layer_params(quantization: dict, path: str) -> tuple[int, int, str] | None:
    """(bits, group_size, mode) a saved model's config gives the layer at ``path``."""
    layer = quantization.get(path, quantization)
    if layer is False:
        return None
    return (int(layer.get("bits", quantization["bits"])), int(layer.get("group_size", quantization["group_size"])),
            layer.get("mode", quantization.get("mode", "affine")))
