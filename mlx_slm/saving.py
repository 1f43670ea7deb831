"""``save``: a folder that stock ``mlx_lm.load`` loads, written atomically."""

from __future__ import annotations

import json

from .io.atomic import atomic_directory
from .loading import model_source
from .model_access import access, model_config


def save_config(config: dict, path) -> None:
    config = dict(config)
    if "quantization" in config:
        config["quantization_config"] = config["quantization"]
    with open(path, "w") as f:
        json.dump(dict(sorted(config.items())), f, indent=2)


def write_weights(model, path, release: bool = False) -> None:
    access(model).save_weights(path, metadata={"format": "mlx"}, release=release)


def save(model, tokenizer, out_dir, overwrite: bool = False, extra_files: dict | None = None,
         release: bool = False):
    """Write ``model.safetensors``, ``config.json`` and the tokenizer files to ``out_dir``.

    ``extra_files`` maps file names to text written beside them (e.g. a training history).
    ``overwrite`` replaces only a folder mlx-slm wrote (see :mod:`mlx_slm.io.atomic`), never
    the folder or file the model was loaded from, nor a folder holding it.
    ``release``: free each of an MLX model's arrays once written, so a model loaded with
    ``lazy=True`` is read and written a tensor at a time, never whole in memory (how ``mlx-slm
    convert`` stays within one tensor of memory at any size); the model cannot compute afterwards.
    Returns the output folder path.
    """
    config = model_config(model)
    with atomic_directory(out_dir, overwrite=overwrite, inputs=[model_source(model)]) as folder:
        write_weights(model, folder / "model.safetensors", release)
        save_config(config, folder / "config.json")
        tokenizer.save_pretrained(str(folder))
        for name, text in (extra_files or {}).items():
            (folder / name).write_text(text)
    return out_dir
