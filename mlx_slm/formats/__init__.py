"""Weight formats, registered by name. Algorithms choose values; formats pack them."""

from __future__ import annotations

from ..errors import SLMError
from . import affine
from .base import WeightFormat

FORMATS: dict[str, WeightFormat] = {}


def register(weight_format: WeightFormat) -> None:
    FORMATS[weight_format.name] = weight_format


def get_format(name: str) -> WeightFormat:
    if name not in FORMATS:
        raise SLMError(f"unknown weight format {name!r}; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]


register(affine.FORMAT)
