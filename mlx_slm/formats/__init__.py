"""Weight formats, registered by name. Algorithms choose values; formats pack them."""

from __future__ import annotations

from ..errors import SLMError
from . import affine, lut, ternary
from .base import WeightFormat

FORMATS: dict[str, WeightFormat] = {}


def register(weight_format: WeightFormat) -> None:
    FORMATS[weight_format.name] = weight_format


def get_format(name: str) -> WeightFormat:
    """The registered format ``name`` (the ``mode`` in config.json); SLMError if unknown."""
    if name not in FORMATS:
        raise SLMError(f"unknown weight format {name!r}; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]


def qat_formats() -> tuple[str, ...]:
    """The formats a float student can train through (quantization-aware training): rows with ``fake``."""
    return tuple(name for name, row in FORMATS.items() if row.fake is not None)


for weight_format in (affine.FORMAT, lut.FORMAT, ternary.FORMAT, ternary.FORMAT_B3):
    register(weight_format)
