"""The teacher's top-k logits for every training window, computed once and kept on disk.

A large teacher then runs once per window instead of once per step, on the engine
:func:`mlx_slm.distill.teacher.teacher_logits` picks. The cache is a
folder with ``values.npy`` (float16 [W, T, k], the k largest logits of each position,
in decreasing order), ``indices.npy`` (int32 [W, T, k]), ``lse.npy`` (float32 [W, T], the
logsumexp of all the logits divided by the temperature, which the loss needs to know the
mass outside the k) and ``meta.json``; it is keyed by a hash of the windows, k, the
temperature and the teacher's weights' shapes and a sample of their values, so a stale
cache is never reused. Written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from tqdm import tqdm

from ..io.atomic import atomic_directory
from ..progress import hidden
from .teacher import teacher_logits, top_k_logits


def cache_key(teacher, windows: np.ndarray, top_k: int, temperature: float) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(windows).tobytes())
    digest.update(f"{top_k} {temperature!r} lse".encode())
    for name, value in tree_flatten(teacher.parameters()):
        digest.update(f"{name}{value.shape}{value.dtype}".encode())
        digest.update(np.array(value.reshape(-1)[:64].astype(mx.float32)).tobytes())
    return digest.hexdigest()[:16]


class TeacherCache:
    """Top-k teacher logits of the windows a run will use.

    windows: all training windows [W, T+1] (inputs are the first T tokens); used: the
    indices of those the run's steps read (default: all), so a short run over a long
    text computes only what it needs.
    """

    def __init__(self, folder, teacher, windows: np.ndarray, top_k: int, used=None, batch_size: int = 4,
                 progress: bool = True, temperature: float = 1.0):
        used = np.arange(len(windows)) if used is None else np.unique(np.asarray(used))
        self.slot = {int(window): slot for slot, window in enumerate(used)}
        key = cache_key(teacher, windows[used], top_k, temperature)
        self.folder = Path(folder) / f"teacher-top{top_k}-{key}"
        if not (self.folder / "meta.json").is_file():
            self.build(teacher, windows[used], top_k, temperature, batch_size, progress)
        self.values = np.load(self.folder / "values.npy", mmap_mode="r")
        self.indices = np.load(self.folder / "indices.npy", mmap_mode="r")
        self.lse = np.load(self.folder / "lse.npy", mmap_mode="r")

    def build(self, teacher, windows, top_k, temperature, batch_size, progress) -> None:
        values, indices, lse = [], [], []
        with teacher_logits(teacher) as logits_of:
            for start in tqdm(range(0, len(windows), batch_size), desc="teacher top-k", disable=hidden(progress)):
                logits = logits_of(windows[start:start + batch_size, :-1])
                top_values, top_indices = top_k_logits(logits, top_k)
                values.append(top_values.astype(np.float16))
                indices.append(top_indices)
                scaled = logits / np.float32(temperature)
                peak = scaled.max(-1, keepdims=True)
                lse.append((peak[..., 0] + np.log(np.exp(scaled - peak).sum(-1))).astype(np.float32))
        with atomic_directory(self.folder, overwrite=True) as tmp:
            np.save(Path(tmp) / "values.npy", np.concatenate(values))
            np.save(Path(tmp) / "indices.npy", np.concatenate(indices))
            np.save(Path(tmp) / "lse.npy", np.concatenate(lse))
            (Path(tmp) / "meta.json").write_text(json.dumps({"top_k": top_k, "windows": len(windows)}))

    def lookup(self, rows: np.ndarray) -> tuple[mx.array, mx.array, mx.array]:
        """(values [B, T, k] float32, indices [B, T, k], logsumexp [B, T] float32) of the windows ``rows``."""
        slots = [self.slot[int(row)] for row in rows]
        return (mx.array(self.values[slots].astype(np.float32)), mx.array(np.asarray(self.indices[slots])),
                mx.array(np.asarray(self.lse[slots])))
