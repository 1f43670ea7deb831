"""Finished blocks of a block-wise reconstruction saved to a folder, so an interrupted run resumes.

The folder holds ``run.json`` (the run's fingerprint: a hash of the calibration windows, the
settings and the quantized start model's arrays) and, per finished block ``i``,
``block-{i:04d}.safetensors`` (the block's parameters after training, exactly as stored) and
``block-{i:04d}.json`` (its report). Each file is written to a temporary name and renamed, so a
block is either wholly saved or absent. A rerun with the same fingerprint loads the saved blocks
instead of training them; since every block trains from its own seed and its inputs are computed
from the blocks before it, the resumed result equals an uninterrupted run's bit for bit. A folder
holding another run's blocks is refused, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import SLMError
from ..io.atomic import atomic_file
from ..runtime import widened

RUN_FILE = "run.json"


def fingerprint(tokens: np.ndarray, settings: dict, model) -> str:
    """sha256 of the windows [S, T], the settings (JSON) and every array of the start ``model``."""
    digest = hashlib.sha256(np.ascontiguousarray(tokens, np.int32).tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, value in sorted(tree_flatten(model.parameters()), key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(str(value.dtype).encode())
        digest.update(widened(value).tobytes())
    return digest.hexdigest()


class BlockCheckpoints:
    """The checkpoint folder of one run (``folder`` None: nothing is saved or loaded)."""

    def __init__(self, folder, run_id: str):
        self.folder = None if folder is None else Path(folder).expanduser()
        if self.folder is None:
            return
        run_file = self.folder / RUN_FILE
        if run_file.exists():
            saved = json.loads(run_file.read_text()).get("fingerprint")
            if saved != run_id:
                raise SLMError(f"{self.folder} holds the blocks of another block-wise run (its calibration, "
                               "settings or start model differ): remove it or choose another checkpoint folder")
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise SLMError(f"{self.folder} is not empty and is not a block-wise checkpoint folder")
        else:
            with atomic_file(run_file) as path:
                path.write_text(json.dumps({"fingerprint": run_id}))

    def stem(self, index: int) -> Path:
        return self.folder / f"block-{index:04d}"

    def load(self, index: int, block) -> dict | None:
        """Block ``index``'s saved parameters put into ``block``; its report (None: not saved)."""
        if self.folder is None or not self.stem(index).with_suffix(".json").exists():
            return None
        arrays = mx.load(str(self.stem(index).with_suffix(".safetensors")), format="safetensors")
        block.update(tree_unflatten(list(arrays.items())))
        mx.eval(block.parameters())
        return json.loads(self.stem(index).with_suffix(".json").read_text())

    def save(self, index: int, block, report: dict) -> None:
        """Save block ``index`` (parameters first, then the report that marks it finished)."""
        if self.folder is None:
            return
        with atomic_file(self.stem(index).with_suffix(".safetensors")) as path, open(path, "wb") as f:
            mx.save_safetensors(f, dict(tree_flatten(block.parameters())))
        with atomic_file(self.stem(index).with_suffix(".json")) as path:
            path.write_text(json.dumps(report))
