"""The ``mlx-slm quantize`` arguments derived from the method registry: ``--method``'s choices and
help from the :class:`~mlx_slm.quant.methods.Method` rows, and one ``--METHOD-FIELD`` flag per
field of each method's options dataclass (its help, default and choices from the field)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from .config import QuantizeConfig
from .methods import methods

TYPES = {"int": int, "float": float, "str": str, "str | None": str, "float | None": float}


def flag(method: str, field) -> str:
    return f"--{method}-{field.metadata.get('flag', field.name).replace('_', '-')}"


def dest(method: str, field) -> str:
    return f"{method}_{field.name}"


def methods_help() -> str:
    """One sentence per method: its name and summary."""
    return "; ".join(f"{name}: {method.summary}" for name, method in methods().items())


def add_method_arguments(parser) -> None:
    """``--method`` and every method's option flags (each None unless given)."""
    rows = methods()
    parser.add_argument("--method", default="rtn", choices=list(rows),
                        help="quantization method (default rtn; see above); all but rtn need --calib")
    for name, method in rows.items():
        if method.options is None:
            continue
        group = parser.add_argument_group(f"{name} options (method {name}, or a method starting from it)")
        for field in fields(method.options):
            default = "" if field.default in (MISSING, None) else f" (default {field.default})"
            kind = field.type if isinstance(field.type, str) else field.type.__name__
            if kind in ("bool", "bool | None"):
                group.add_argument(flag(name, field), dest=dest(name, field), default=None,
                                   action=argparse.BooleanOptionalAction, help=field.metadata["help"] + default)
            else:
                group.add_argument(flag(name, field), dest=dest(name, field), type=TYPES[kind], default=None,
                                   choices=field.metadata.get("choices"), help=field.metadata["help"] + default)


def method_options(args) -> dict:
    """Method name -> {field: value} of the option flags given on the command line."""
    given = {}
    for name, method in methods().items():
        if method.options is None:
            continue
        values = {field.name: getattr(args, dest(name, field)) for field in fields(method.options)}
        values = {key: value for key, value in values.items() if value is not None}
        if values:
            given[name] = values
    return given


def quantize_config(args) -> QuantizeConfig:
    """The checked QuantizeConfig of ``mlx-slm quantize``'s arguments."""
    return QuantizeConfig(method=args.method, format=args.format, bits=args.bits, group_size=args.group_size,
                          options=method_options(args), layers=args.config, target_bpw=args.target_bpw,
                          per_row_scale=args.per_row_scale, cpu_engine=args.cpu_engine).check()
