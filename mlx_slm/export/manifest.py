"""The JSON manifest SLMKit reads beside a Core ML model (``<Name>.json``)."""

from __future__ import annotations


def token_id(tokenizer, name: str):
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, int) else None


def eos_token_ids(tokenizer, config: dict):
    """An int, or a list when the model stops on several tokens."""
    ids = getattr(tokenizer, "eos_token_ids", None) or config.get("eos_token_id")
    if ids is None:
        ids = token_id(tokenizer, "eos_token_id")
    if isinstance(ids, (set, tuple, list)):
        ids = sorted(int(i) for i in ids)
        return ids[0] if len(ids) == 1 else ids
    return None if ids is None else int(ids)


def build_manifest(tokenizer, config: dict, max_context: int, layers: list, version: str) -> dict:
    """Keys: bos/eos/pad token ids, chat_template, max_context, mlx_slm_version, model_type, layers."""
    return {
        "bos_token_id": token_id(tokenizer, "bos_token_id"),
        "eos_token_id": eos_token_ids(tokenizer, config),
        "pad_token_id": token_id(tokenizer, "pad_token_id"),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "max_context": max_context,
        "mlx_slm_version": version,
        "model_type": config.get("model_type"),
        "layers": layers,
    }
