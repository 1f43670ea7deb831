"""The quantization methods: one registered :class:`Method` row per module of this package.

A method module defines its options (a dataclass built with :func:`option`, with a
``check()``) and calls :func:`register`; the modules are imported on first lookup, so
adding a method is adding one file here. :func:`mlx_slm.quantize` runs the row, and the
``mlx-slm quantize`` command derives ``--method``'s choices, its help and one
``--METHOD-FIELD`` flag per option field from the rows. Importable without MLX: the
training methods import MLX inside ``run``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from ...errors import SLMError

_REGISTRY: dict[str, Method] = {}
_LOADED: list[bool] = []  # [True] once every module of the package was imported


def option(default, help: str, **cli):
    """A field of a method's options: its default, its help text, and extra CLI settings
    (``choices``, ``flag``: a shorter flag name than the field's)."""
    return field(default=default, metadata={"help": help, **cli})


class MethodOptions:
    """Base of the options dataclasses: ``check()`` (SLMError for bad values, returns self),
    :meth:`from_options`, :meth:`uses` and :meth:`teacher_tokens`."""

    def check(self):
        return self

    def uses(self, weight_format: str) -> tuple[str, ...]:
        """The other methods whose options this run reads (e.g. the method it starts from)."""
        return ()

    def teacher_tokens(self, seq_len: int, seed: int) -> int:
        """How many tokens of text sampled from the float model at ``seed`` this method trains on beside
        its calibration windows of ``seq_len`` (0: none). quantize samples them with a sampled
        calibration's text at its seed (:meth:`~mlx_slm.data.windows.Calibration.sampled`)."""
        return 0

    @classmethod
    def label(cls) -> str:
        """The method's name as messages say it: GPTQConfig -> "gptq"."""
        return cls.__name__.removesuffix("Config").lower()

    @classmethod
    def from_options(cls, options):
        """An instance from ``options`` (an instance, a dict of its fields, or None), checked."""
        if isinstance(options, cls):
            return options.check()
        known = {f.name for f in fields(cls)}
        unknown = set(options or {}) - known
        if unknown:
            raise SLMError(f"unknown {cls.label()} options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**(options or {})).check()


@dataclass(frozen=True)
class Method:
    """One quantization method.

    name / summary: the ``--method`` choice and its one-line help.
    options: its :class:`MethodOptions` dataclass (None: it has no settings).
    formats: the weight formats it can produce (None: every format).
    calibrated: it needs calibration text. training: it needs MLX (autograd).
    run(model, settings, calibration, progress): quantize ``model`` in place with the checked
    :class:`~mlx_slm.quant.config.QuantizeConfig` ``settings``.
    report(record) -> str | None: the line the command prints from the saved record.
    """

    name: str
    summary: str
    run: Callable
    options: type | None = None
    formats: tuple[str, ...] | None = None
    calibrated: bool = False
    training: bool = False
    report: Callable | None = None
    rank: int = 99  # where --help lists it

    def supports(self, weight_format: str) -> bool:
        return self.formats is None or weight_format in self.formats

    def refuses(self, unsupported) -> str:
        """The message for a request of formats ``unsupported`` this method does not produce."""
        named = self.formats[0] if len(self.formats) == 1 else f"{', '.join(self.formats[:-1])} and {self.formats[-1]}"
        return f"method {self.name!r} supports the {named} format{'s' if len(self.formats) > 1 else ''} only, " \
               f"not {unsupported!r}"


def register(method: Method) -> Method:
    _REGISTRY[method.name] = method
    return method


def _load() -> None:
    """Import every module of this package once (each registers its method; importing one
    directly, for its options, registers only that one)."""
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _LOADED.append(True)


def methods() -> dict[str, Method]:
    """Every registered method by name, in the order of their ``rank``."""
    _load()
    return {m.name: m for m in sorted(_REGISTRY.values(), key=lambda m: (m.rank, m.name))}


def get_method(name: str) -> Method:
    known = methods()
    if name not in known:
        raise SLMError(f"quantization method {name!r} is not available; available: {', '.join(known)}")
    return known[name]
