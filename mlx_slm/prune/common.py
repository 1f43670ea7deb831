"""What every pruning pass shares: checks, the record, observers of the numpy engine."""

from __future__ import annotations

from ..errors import SLMError
from ..model_access import model_config, set_model_config


def check_float_model(model, what: str) -> dict:
    """The model's config; one clear error if it is quantized."""
    config = model_config(model)
    if config.get("quantization"):
        raise SLMError(f"the model is already quantized; {what} the float model first, then quantize")
    return config


def add_record(model, record: dict) -> None:
    """Append ``record`` to ``config["mlx_slm"]["pruning"]`` (a list: passes can follow each other)."""
    config = model_config(model)
    section = config.setdefault("mlx_slm", {})
    section.setdefault("pruning", []).append(record)
    set_model_config(model, config)


class Observers:
    """Several observers of :meth:`NumpyLlama.linear` at once."""

    def __init__(self, *observers):
        self.observers = observers

    def __call__(self, name, x):
        for observer in self.observers:
            observer(name, x)
