"""Which compute backend runs: MLX when importable, numpy otherwise.

``MLX_SLM_BACKEND=numpy`` forces the numpy backend even where MLX exists.
"""

from __future__ import annotations

import functools
import os

from .errors import MLXRequiredError, SLMError


@functools.cache
def mlx_available() -> bool:
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend() -> str:
    choice = os.environ.get("MLX_SLM_BACKEND", "").lower()
    if choice == "numpy":
        return "numpy"
    if choice == "mlx" and not mlx_available():
        raise MLXRequiredError("MLX_SLM_BACKEND=mlx")
    if choice not in ("", "mlx"):
        raise SLMError(f"MLX_SLM_BACKEND must be 'mlx' or 'numpy', not {choice!r}")
    return "mlx" if mlx_available() else "numpy"


def resolve_backend(backend: str | None) -> str:
    backend = backend or default_backend()
    if backend not in ("mlx", "numpy"):
        raise SLMError(f"backend must be 'mlx' or 'numpy', not {backend!r}")
    if backend == "mlx" and not mlx_available():
        raise MLXRequiredError("the MLX backend")
    return backend


def require_mlx(feature: str) -> None:
    """Raise one clear error if ``feature`` (e.g. "distillation") cannot run."""
    if not mlx_available():
        raise MLXRequiredError(feature)


def backend_of(model) -> str:
    return getattr(model, "backend", None) or "mlx"
