"""Pieces every ``mlx-slm`` subcommand parser shares."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = "Set MLX_SLM_BACKEND=numpy to run without MLX, MLX_SLM_DEBUG=1 for tracebacks."


class Parser(argparse.ArgumentParser):
    """argparse with one line for a bad command line (no usage block): ``PROG: error: MESSAGE (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_backend(parser, default: str = "MLX when importable, else numpy") -> None:
    parser.add_argument("--backend", choices=("mlx", "numpy"), default=None,
                        help=f"compute backend (default: {default})")


def add_cpu_engine(parser, what: str) -> None:
    """``--cpu-engine``: on a CPU, whether an MLX model's ``what`` runs on the numpy engine or on MLX
    (default: :func:`mlx_slm.model_access.choose_engine`)."""
    parser.add_argument("--cpu-engine", choices=("numpy", "mlx"), default=None,
                        help=f"on a CPU, run {what} on numpy's BLAS (default for Llama-family models: MLX's "
                             "CPU exp() is scalar and slow) or on MLX (default for every other architecture)")


def add_calibration(parser, calib_help: str, num_samples: int | None = None) -> None:
    """``--calib`` (help ``calib_help``), ``--num-samples`` and ``--seq-len``: the calibration windows
    (defaults: :data:`mlx_slm.data.windows.DEFAULT_NUM_SAMPLES` / ``DEFAULT_SEQ_LEN``)."""
    from .data.windows import DEFAULT_NUM_SAMPLES, DEFAULT_SEQ_LEN

    num_samples = DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    parser.add_argument("--calib", help=calib_help)
    parser.add_argument("--num-samples", type=int, default=num_samples,
                        help=f"calibration windows (default {num_samples})")
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN,
                        help=f"tokens per calibration window (default {DEFAULT_SEQ_LEN})")


def check_output(args, *inputs, overwrite: bool | None = None):
    """Refuse ``args.output`` before any work (see :func:`mlx_slm.io.atomic.check_output`).

    ``inputs`` are the paths the command reads (model, teacher, texts); the output may
    neither be one of them nor hold one.
    """
    from .io.atomic import check_output as check

    given = [p for p in inputs if p is not None and Path(str(p)).expanduser().exists()]
    return check(args.output, args.overwrite if overwrite is None else overwrite, given)
