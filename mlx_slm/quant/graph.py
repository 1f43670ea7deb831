"""Which output channels can be rescaled exactly: scaling groups found by a numeric probe.

A *scaling group* is a producer whose output channels can be multiplied by any
positive vector ``c`` [K] (a norm's weight [K], or a linear layer's output rows
and bias) together with the linear layers that take exactly that output as their
input: multiplying the producer by ``c`` and the consumers' input columns by
``1/c`` leaves the function unchanged. AWQ moves per-channel scales across such
a pair.

No per-architecture table: each candidate producer of a decoder block is scaled by
a random positive ``c`` on a small random input, and a linear layer is a consumer
when its input became exactly ``X * c`` column by column. The group is kept only if
then dividing the consumers' columns by ``c`` gives back the block's output. On the
Llama family this finds input_layernorm -> q/k/v, post_attention_layernorm ->
gate/up, up -> down and, with as many key/value heads as query heads, v -> o.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..formats.dtypes import as_float32

TOLERANCE = 1e-4  # max |difference| relative to max |expected| when a change counts as exact
PROBE_TOKENS = 8


@dataclass(frozen=True)
class ScalingGroup:
    """producer: a norm's path (its ``.weight`` [K] is scaled) or a linear layer's path (its rows
    and bias are scaled); kind: "norm" or "linear"; consumers: linear layers whose input [..., K]
    is exactly the producer's output."""

    producer: str
    kind: str
    consumers: tuple[str, ...]


def close(got: np.ndarray, expected: np.ndarray) -> bool:
    """Same shape and max |got - expected| <= TOLERANCE * max |expected|."""
    if got.shape != expected.shape:
        return False
    return float(np.max(np.abs(got - expected))) <= TOLERANCE * max(float(np.max(np.abs(expected))), 1e-30)


def capture(engine, run, h: np.ndarray):
    """``(inputs {linear: x [..., K]}, output)`` of ``run(h)`` on ``engine``."""
    inputs = {}
    previous, engine.observer = engine.observer, lambda name, x: inputs.setdefault(name, np.array(x))
    try:
        out = run(h)
    finally:
        engine.observer = previous
    return inputs, out


@contextmanager
def rescaled(engine, producer: str, kind: str, c: np.ndarray, consumers=()):
    """Temporarily multiply ``producer``'s output channels by ``c`` [K] and divide the consumers'
    input columns by ``c``; every weight is put back afterwards."""
    saved_weights = {}
    saved_dense = {}

    def set_weight(name, value):
        saved_weights.setdefault(name, engine.weights[name])
        engine.weights[name] = value

    def set_dense(name, value):
        saved_dense.setdefault(name, engine.dense(name))
        engine.set_dense(name, value)

    try:
        if kind == "norm":
            set_weight(f"{producer}.weight", as_float32(engine.weights[f"{producer}.weight"]) * c)
        else:
            set_dense(producer, engine.dense(producer) * c[:, None])
            if f"{producer}.bias" in engine.weights:
                set_weight(f"{producer}.bias", as_float32(engine.weights[f"{producer}.bias"]) * c)
        for name in consumers:
            set_dense(name, engine.dense(name) / c)
        yield
    finally:
        for name, value in saved_weights.items():
            engine.weights[name] = value
        for name, value in saved_dense.items():
            engine.set_dense(name, value)


def candidates(engine, parameters, linears: dict) -> list[tuple[str, str, int]]:
    """(producer, kind, K) worth probing: 1-D ``.weight`` vectors among ``parameters`` and the
    linears among ``linears`` {name: input width}, whose length / row count is some linear's input width."""
    widths = set(linears.values())
    found = []
    for name in sorted(parameters):
        path = name[: -len(".weight")]
        if not name.endswith(".weight") or path in linears:
            continue
        shape = engine.weights[name].shape
        if len(shape) == 1 and shape[0] in widths:
            found.append((path, "norm", shape[0]))
    for name in sorted(linears):
        rows = engine.dense(name).shape[0]
        if rows in widths:
            found.append((name, "linear", rows))
    return found


def probe_groups(engine, run, parameters, h: np.ndarray, seed: int = 0) -> list[ScalingGroup]:
    """Scaling groups of the computation ``run(h)`` [B, T, D] -> [B, T, ...] among ``parameters``
    (the names of its parameters, e.g. one decoder block's) and the linear layers it calls."""
    rng = np.random.default_rng(seed)
    base_inputs, base_out = capture(engine, run, h)
    linears = {name: x.shape[-1] for name, x in base_inputs.items()}
    groups = []
    for producer, kind, width in candidates(engine, parameters, linears):
        if kind == "linear" and producer not in linears:
            continue
        c = rng.uniform(0.5, 2.0, width).astype(np.float32)
        with rescaled(engine, producer, kind, c):
            inputs, _ = capture(engine, run, h)
        consumers = tuple(name for name, x in base_inputs.items() if linears[name] == width
                          and close(inputs[name], x * c) and not close(inputs[name], x))
        if not consumers:
            continue
        with rescaled(engine, producer, kind, c, consumers):
            _, out = capture(engine, run, h)
        if close(out, base_out):
            groups.append(ScalingGroup(producer, kind, consumers))
    return groups


def probe_input(engine, seed: int = 0) -> np.ndarray:
    """Random hidden states [1, PROBE_TOKENS, hidden_size] float32."""
    hidden = int(engine.config["hidden_size"])
    return np.random.default_rng(seed).standard_normal((1, PROBE_TOKENS, hidden)).astype(np.float32)


def block_groups(engine, layer: int) -> list[ScalingGroup]:
    """Scaling groups inside decoder block ``layer`` of a calibration ``engine`` (numpy or MLX)."""
    prefix = f"model.layers.{layer}."
    parameters = [name for name in engine.weights if name.startswith(prefix)]
    return probe_groups(engine, lambda h: engine.block(layer, h), parameters, probe_input(engine))


def head_groups(engine) -> list[ScalingGroup]:
    """The final norm -> output head group, found by the same probe; none when the embeddings are
    tied: the head is then the input embedding, and scaling its columns would change the embedding
    lookup of every token (the function would not be preserved)."""
    if engine.tied:
        return []
    return probe_groups(engine, engine.head, ["model.norm.weight"], probe_input(engine))


def model_groups(engine) -> list[ScalingGroup]:
    """Every block's groups, then the head's (for inspection; AWQ discovers block by block)."""
    return [g for layer in range(engine.num_layers) for g in block_groups(engine, layer)] + head_groups(engine)
