"""Hugging Face model folders: find them (locally or on the Hub) and read them."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SLMError
from . import safetensors_np

DOWNLOAD_PATTERNS = ["*.json", "model*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]


def resolve(source) -> Path:
    """A local model folder for ``source`` (a folder path or a Hub repo id)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SLMError(f"{path} is neither a model folder nor a .gguf file")
        return path
    text = str(source)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise SLMError(f"no model at {text}: no such folder or file")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as err:
        raise SLMError(
            f"no local folder {text!r}, and downloading it from the Hugging Face Hub failed: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def read_config(folder: Path) -> dict:
    """config.json of a model folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise SLMError(f"{folder} has no config.json: not a Hugging Face / MLX model folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SLMError(f"{path} is not valid JSON: {err}") from None


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise SLMError(f"{folder} has no model*.safetensors weights")
    return files


def read_weights(folder: Path) -> dict:
    """All tensors of the folder's safetensors files as numpy arrays."""
    weights = {}
    for file in weight_files(folder):
        weights.update(safetensors_np.load(file))
    return weights


def check_weights(folder: Path) -> None:
    """Fail clearly on truncated or corrupt safetensors before MLX reads them."""
    for file in weight_files(folder):
        safetensors_np.load(file)
