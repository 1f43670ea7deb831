"""QuantizeConfig: what :func:`mlx_slm.quantize` does, checked before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import SLMError
from ..formats import get_format
from ..model_access import ENGINES
from .methods import get_method


@dataclass
class QuantizeConfig:
    """One quantization request.

    method: a registered method (:mod:`mlx_slm.quant.methods`).
    format: a registered weight format (:mod:`mlx_slm.formats`); bits / group_size: its
    settings for every layer (None: the format's defaults).
    options: method name -> that method's options (its dataclass or a dict of its fields),
    for the method and the methods it runs (its start, awq's gptq quantizer); the others'
    defaults are filled in by :meth:`check`.
    layers: per-layer overrides (a dict, or a YAML/JSON path; :mod:`mlx_slm.qconfig`).
    target_bpw: plan each layer's affine bits and group size to average this many bits
    per weight (:mod:`mlx_slm.quant.budget`); not combined with ``layers``.
    per_row_scale: lut only: a float16 scale per output row (None: on when a palette
    serves several rows).
    cpu_engine: on a CPU, which engine an MLX model's calibration statistics (and target_bpw's
    sensitivity passes) come from, "numpy" or "mlx" (None: :func:`mlx_slm.model_access.choose_engine`'s
    default).
    """

    method: str = "rtn"
    format: str = "affine"
    bits: int | None = None
    group_size: int | None = None
    options: dict = field(default_factory=dict)
    layers: dict | str | Path | None = None
    target_bpw: float | None = None
    per_row_scale: bool | None = None
    cpu_engine: str | None = None

    def check(self) -> QuantizeConfig:
        """SLMError for a request no layer could take; returns a copy whose ``options`` hold
        every method it runs, checked and with defaults."""
        method = get_method(self.method)
        get_format(self.format).check(*self.bits_and_group())
        if self.cpu_engine not in (None, *ENGINES):
            raise SLMError(f"cpu_engine must be 'numpy' or 'mlx', not {self.cpu_engine!r}")
        given = {name: self._given(name, value) for name, value in (self.options or {}).items()}
        used, todo = [], [method.name]
        while todo:
            name = todo.pop()
            if name in used:
                continue
            used.append(name)
            runs = get_method(name)
            if not runs.supports(self.format):
                raise SLMError(runs.refuses(self.format))
            if runs.options is not None:
                given.setdefault(name, runs.options().check())
                todo.extend(given[name].uses(self.format))
        unused = sorted(set(given) - set(used))
        if unused:
            raise SLMError(f"{' and '.join(unused)} options are given, but method {self.method!r} does not use them")
        if self.target_bpw is not None:
            if self.layers:
                raise SLMError("target_bpw plans every layer's settings itself: do not pass a config with it")
            if self.format != "affine":
                raise SLMError(f"target_bpw plans affine bits and group sizes, not the {self.format!r} format")
        return replace(self, options=given)

    def bits_and_group(self) -> tuple[int, int]:
        """(bits, group_size) for every layer: the given ones, else the format's defaults."""
        weight_format = get_format(self.format)
        return (weight_format.default_bits if self.bits is None else self.bits,
                weight_format.default_group_size if self.group_size is None else self.group_size)

    @staticmethod
    def _given(name: str, value):
        method = get_method(name)
        if method.options is None:
            raise SLMError(f"method {name!r} has no options")
        return method.options.from_options(value)

    def options_of(self, name: str):
        """The checked options of method ``name`` (its defaults when none were given)."""
        return self._given(name, self.options.get(name))
