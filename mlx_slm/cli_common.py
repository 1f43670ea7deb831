"""Pieces every ``mlx-slm`` subcommand parser shares."""

from __future__ import annotations

EPILOG = "Set MLX_SLM_BACKEND=numpy to run without MLX, MLX_SLM_DEBUG=1 for tracebacks."


def add_backend(parser) -> None:
    parser.add_argument("--backend", choices=("mlx", "numpy"), default=None,
                        help="compute backend (default: MLX when importable, else numpy)")
