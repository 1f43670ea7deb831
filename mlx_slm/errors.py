"""The one exception type users see: a clear message, never a deep traceback."""


class SLMError(Exception):
    """Bad input or an unsupported request, explained in plain words."""


class MLXRequiredError(SLMError):
    """Raised when a feature that needs MLX (training) runs without it: MLX is not importable, or
    ``reason`` says what else is missing (e.g. the model was loaded on the numpy backend)."""

    def __init__(self, feature: str, reason: str | None = None):
        super().__init__(
            f"{feature} needs MLX: {reason}" if reason else
            f"{feature} needs MLX, which is not importable here. "
            "Install it with `pip install mlx` on macOS or `pip install 'mlx[cpu]'` on Linux."
        )
