"""What every weight format provides (ARCHITECTURE.md's traits table)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


def row_share(rows: int, arrays) -> int:
    """Rows per entry along the first axis of a layer's stored arrays (``rows`` rows in all; None
    entries skipped): 1 for per-row arrays, g for palettes shared by g rows. A slice of rows whose
    bounds are multiples of it cuts every array at whole entries (:func:`cut_rows`)."""
    return math.lcm(*(rows // a.shape[0] for a in arrays if a is not None))


def cut_rows(array, rows: int, start: int, stop: int):
    """The entries of a stored array (numpy or MLX) that serve rows ``start`` .. ``stop`` of a layer of
    ``rows`` rows: its first axis covers the rows in equal shares."""
    return array[start * array.shape[0] // rows: stop * array.shape[0] // rows]


def no_options(group_size: int, search: bool, per_row_scale) -> dict:
    return {}


@dataclass(frozen=True)
class WeightFormat:
    """One low-bit weight format.

    name: the registry key and the ``mode`` recorded in config.json.
    check(bits, group_size): raise SLMError if the settings are invalid for any layer.
    misfit(shape [N, K], bits, group_size) -> None, or why a layer of that shape cannot take them.
    pack(w [N, K], bits, group_size, **options) -> stored arrays in ``stored`` order (None for an
    absent optional array).
    unpack(*stored, bits, group_size, dtype=None) -> w [N, K].
    matmul(x [..., K], *stored, bits, group_size) -> [..., N] float32.
    bits_per_weight(bits, group_size, shape=None, **options) -> storage bits per weight, every
    stored byte included.
    layer_shape(stored {suffix: array or None}, bits, group_size) -> (N, K) of the float weight.
    label(bits, group_size) -> one line naming a layer's settings (``mlx-slm info``).
    view(stored {suffix: numpy array or None}, bits, group_size) -> the layer as the exporters read
    it: :class:`~mlx_slm.formats.views.AffineWeight` or :class:`~mlx_slm.formats.views.PalettizedWeight`.
    empty(shape (N, K), bits, group_size, **options) -> {suffix: (array shape, numpy dtype)} of the
    stored arrays, for placeholders that saved arrays are loaded into; None for a format MLX
    itself builds (affine: ``nn.QuantizedLinear``).
    stored: parameter name suffixes of the stored arrays, e.g. ("weight", "scales", "biases").
    optional: the suffixes in ``stored`` that a layer may lack.
    default_bits / default_group_size: what ``quantize`` uses when none is given.
    description: one sentence for the CLI's help.
    pack_options(group_size, search, per_row_scale) -> the keyword options ``pack`` takes for one layer
    of a request: ``search`` True when the request chooses values by importance (imatrix and the
    calibrated methods) rather than plain rounding, ``per_row_scale`` the request's (None: the
    format's default). Formats whose ``pack`` always weighs by importance ignore ``search``.
    fake(weight mx.array [N, K], bits, group_size) -> the weight rounded as plain rounding would store
    it, in MLX ops and weight's dtype: what quantization-aware training of a float student sees (None:
    that training does not offer the format).
    """

    name: str
    check: Callable
    misfit: Callable
    pack: Callable
    unpack: Callable
    matmul: Callable
    bits_per_weight: Callable
    layer_shape: Callable
    label: Callable
    view: Callable
    stored: tuple[str, ...]
    empty: Callable | None = None
    optional: tuple[str, ...] = ()
    default_bits: int = 4
    default_group_size: int = 64
    description: str = ""
    pack_options: Callable = no_options
    fake: Callable | None = None
