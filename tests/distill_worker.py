"""Run by tests/test_distill.py under ``mlx.launch -n 2``: two data-parallel ranks distill a tiny model.

    mlx.launch -n 2 --backend ring python tests/distill_worker.py TEACHER STUDENT TEXT OUT.npz
"""

import sys

import mlx_slm  # before mlx: the fast BLAS

# isort: split
import numpy as np
from distill_settings import SETTINGS
from mlx.utils import tree_flatten

from mlx_slm.distill import DistillConfig, distill

teacher_dir, student_dir, text_file, out = sys.argv[1:5]
teacher, tokenizer = mlx_slm.load(teacher_dir)
student, _ = mlx_slm.load(student_dir)
distill(student, teacher, tokenizer, text_file, DistillConfig(**SETTINGS), progress=False)
import mlx.core as mx  # noqa: E402

if mx.distributed.init().rank() == 0:
    np.savez(out, **{k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(student.parameters())})
