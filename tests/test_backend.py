"""Which backend runs, and the one clear error when MLX is needed but missing."""

import os

import pytest

from mlx_slm.backend import mlx_available, require_mlx, resolve_backend
from mlx_slm.errors import MLXRequiredError

HIDDEN = os.environ.get("MLX_SLM_EXPECT_NO_MLX") == "1"


@pytest.mark.skipif(not HIDDEN, reason="only in the numpy-fallback run (MLX hidden)")
def test_mlx_is_really_hidden():
    assert not mlx_available()
    with pytest.raises(ImportError):
        import mlx.core  # noqa: F401
    assert resolve_backend(None) == "numpy"
    with pytest.raises(MLXRequiredError, match="distillation needs MLX"):
        require_mlx("distillation")
    with pytest.raises(MLXRequiredError, match="pip install"):
        resolve_backend("mlx")
    from mlx_slm.distill import DistillConfig, distill

    DistillConfig(steps=3).check()  # settings are built and checked without MLX
    with pytest.raises(MLXRequiredError, match="distillation needs MLX"):
        distill(None, None, None, ["text"])


@pytest.mark.mlx
def test_mlx_is_the_default_when_present(monkeypatch):
    monkeypatch.delenv("MLX_SLM_BACKEND", raising=False)
    assert resolve_backend(None) == "mlx"
    monkeypatch.setenv("MLX_SLM_BACKEND", "numpy")
    assert resolve_backend(None) == "numpy"
    require_mlx("distillation")
