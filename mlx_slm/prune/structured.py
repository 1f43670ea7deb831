"""Structured pruning that shrinks the model: MLP channels, attention KV groups, whole layers.

The pruned model is a standard config of the same architecture (smaller
``intermediate_size``, ``num_attention_heads`` / ``num_key_value_heads``,
``num_hidden_layers``; ``head_dim`` written explicitly), so stock
``mlx_lm.load`` reads what :func:`mlx_slm.save` writes.

- Layers (ShortGPT, Men et al., 2024): Block Influence of block i is
  ``1 - mean over tokens of cos(h_in, h_out)`` on calibration text through the
  model as given; the ``drop_layers`` blocks with the lowest influence are
  removed and the rest renumbered. Layers are dropped first.
- Width: one decoder block at a time on the numpy engine (block i sees the
  outputs of the already-pruned blocks < i). An MLP channel j is ranked by the
  energy of its contribution to the block output, ``E[a_j^2] * ||W_down[:, j]||^2``
  (a_j: the input of down_proj), and a KV group g (one KV head with the query
  heads that read it) by ``E||W_o[:, G] x_G||^2 = trace(W_G E[x_G x_G^T] W_G^T)``
  over its columns G of o_proj. The same number of channels and groups is removed
  from every layer. Removing a group's o_proj columns (or a channel's down_proj
  column) is exactly removing that group (channel), which is how the later blocks
  see the pruned earlier ones during calibration.
"""

from __future__ import annotations

import re
from functools import partial

import numpy as np
from tqdm import tqdm

from ..calib.blocks import in_batches
from ..calib.statistics import InputStatistics
from ..data.windows import DEFAULT_NUM_SAMPLES, DEFAULT_SEQ_LEN, calibration_windows
from ..errors import SLMError
from ..formats.dtypes import round_to
from ..model_access import access
from ..progress import hidden
from .common import Observers, add_record, check_float_model

LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def block_influence(engine, tokens: np.ndarray, batch_size: int = 4, progress: bool = True) -> np.ndarray:
    """Block Influence per decoder block [L]: 1 - mean cosine(input, output) over all calibration tokens."""
    cosines = np.zeros(engine.num_layers)
    count = 0
    for start in tqdm(range(0, len(tokens), batch_size), desc="block influence", disable=hidden(progress)):
        h = engine.embed(tokens[start : start + batch_size])
        for layer in range(engine.num_layers):
            out = engine.block(layer, h)
            dot = np.einsum("btd,btd->bt", h, out, dtype=np.float64)
            norms = np.linalg.norm(h, axis=-1).astype(np.float64) * np.linalg.norm(out, axis=-1)
            cosines[layer] += np.sum(dot / np.maximum(norms, 1e-30))
            h = out
        count += h.shape[0] * h.shape[1]
    return 1.0 - cosines / count


def drop_layers_from(config: dict, weights: dict, keep: list[int]) -> tuple[dict, dict]:
    """Keep decoder blocks ``keep`` (original indices, ascending), renumbered 0..len-1."""
    index = {old: new for new, old in enumerate(keep)}
    kept = {}
    for name, value in weights.items():
        match = LAYER.match(name)
        if match is None:
            kept[name] = value
        elif int(match.group(1)) in index:
            kept[f"model.layers.{index[int(match.group(1))]}.{match.group(2)}"] = value
    config = dict(config, num_hidden_layers=len(keep))
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = [config["layer_types"][i] for i in keep]
    return config, kept


def top_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores (ties: lower index first), ascending."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return np.sort(order[:count])


def group_energies(w_o: np.ndarray, hessian: np.ndarray, groups: int) -> np.ndarray:
    """E||W_o[:, G] x_G||^2 per group of ``K / groups`` consecutive o_proj input columns."""
    width = w_o.shape[1] // groups
    energies = []
    for g in range(groups):
        cols = slice(g * width, (g + 1) * width)
        part = w_o[:, cols].astype(np.float64)
        energies.append(float(np.sum((part @ hessian[cols, cols]) * part)))
    return np.array(energies)


def choose_width(engine, tokens: np.ndarray, keep_channels: int | None, keep_groups: int | None,
                 batch_size: int = 4, progress: bool = True) -> tuple[dict, dict]:
    """Per layer, the MLP channels and KV groups to keep: ``({layer: channels}, {layer: groups})``."""
    channels, groups = {}, {}
    rep = engine.num_heads // engine.num_kv_heads
    h = in_batches(engine.embed, tokens, batch_size)
    for layer in tqdm(range(engine.num_layers), desc="width importance", disable=hidden(progress)):
        o_name, d_name = f"model.layers.{layer}.self_attn.o_proj", f"model.layers.{layer}.mlp.down_proj"
        attention = InputStatistics([o_name], gram=True)
        mlp = InputStatistics([d_name], gram=False)
        engine.observer = Observers(attention, mlp)
        try:
            in_batches(partial(engine.block, layer), h, batch_size)
        finally:
            engine.observer = None
        attention.release()
        mlp.release()
        if keep_groups is not None:
            w_o = engine.dense(o_name)
            groups[layer] = top_indices(group_energies(w_o, attention.hessian(o_name), engine.num_kv_heads),
                                        keep_groups)
            column_keep = np.zeros(engine.num_kv_heads, bool)
            column_keep[groups[layer]] = True
            engine.set_dense(o_name, w_o * np.repeat(column_keep, rep * engine.head_dim)[None, :])
        if keep_channels is not None:
            w_d = engine.dense(d_name)
            scores = mlp.importance(d_name) * np.sum(np.square(w_d, dtype=np.float64), axis=0)
            channels[layer] = top_indices(scores, keep_channels)
            mask = np.zeros(w_d.shape[1], np.float32)
            mask[channels[layer]] = 1.0
            engine.set_dense(d_name, w_d * mask[None, :])
        h = in_batches(partial(engine.block, layer), h, batch_size)
        engine.drop_cache([p for p in engine.dense_names() if p.startswith(f"model.layers.{layer}.")])
    return channels, groups


def head_rows(heads: np.ndarray, head_dim: int) -> np.ndarray:
    """Row indices of the given heads in a [heads * head_dim, ...] projection."""
    return (np.asarray(heads)[:, None] * head_dim + np.arange(head_dim)[None, :]).reshape(-1)


def slice_width(config: dict, weights: dict, channels: dict, groups: dict, num_heads: int, num_kv_heads: int,
                head_dim: int) -> tuple[dict, dict]:
    """Remove the MLP channels / KV groups not kept; return the new (config, weights)."""
    weights = dict(weights)
    rep = num_heads // num_kv_heads

    def take(name, index, axis):
        if name in weights:
            weights[name] = np.ascontiguousarray(np.take(weights[name], index, axis=axis))

    for layer, keep in channels.items():
        p = f"model.layers.{layer}.mlp"
        for proj in ("gate_proj", "up_proj"):
            take(f"{p}.{proj}.weight", keep, 0)
            take(f"{p}.{proj}.bias", keep, 0)
        take(f"{p}.down_proj.weight", keep, 1)
    for layer, keep in groups.items():
        p = f"model.layers.{layer}.self_attn"
        q_heads = (np.asarray(keep)[:, None] * rep + np.arange(rep)[None, :]).reshape(-1)
        q_rows, kv_rows = head_rows(q_heads, head_dim), head_rows(keep, head_dim)
        for proj, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            take(f"{p}.{proj}.weight", rows, 0)
            take(f"{p}.{proj}.bias", rows, 0)
        take(f"{p}.o_proj.weight", q_rows, 1)
    config = dict(config, head_dim=head_dim)
    if channels:
        config["intermediate_size"] = len(next(iter(channels.values())))
    if groups:
        kept = len(next(iter(groups.values())))
        config["num_key_value_heads"] = kept
        config["num_attention_heads"] = kept * rep
    return config, weights


def count_parameters(model) -> int:
    """Number of stored parameter values (every tensor, norms included)."""
    return int(sum(value.size for value in access(model).arrays().values()))


def transformers_objection(config: dict) -> str | None:
    """Why transformers' config class for this model type refuses ``config`` (None if it accepts it or is
    unknown). ``mlx_lm.load`` and :func:`mlx_slm.load` read config.json through it (for the tokenizer):
    LlamaConfig, for one, requires ``hidden_size % num_attention_heads == 0`` even with an explicit head_dim."""
    try:
        from transformers import AutoConfig
    except ImportError:
        return None
    fields = {k: v for k, v in config.items()
              if k not in ("model_type", "quantization", "quantization_config", "mlx_slm")}
    try:
        AutoConfig.for_model(config["model_type"], **fields)
    except Exception as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        return lines[-1].rstrip(".") if lines else type(err).__name__
    return None


def check_head_count(config: dict, drop_heads: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    """Refuse a head count that would make the saved config unloadable by transformers-based loaders."""
    if not drop_heads or transformers_objection(config) is not None:
        return

    def planned(drop):
        kept = num_kv_heads - drop
        return dict(config, num_key_value_heads=kept, num_attention_heads=kept * num_heads // num_kv_heads,
                    head_dim=head_dim)

    why = transformers_objection(planned(drop_heads))
    if why is not None:
        allowed = [d for d in range(1, num_kv_heads) if transformers_objection(planned(d)) is None]
        raise SLMError(f"drop_heads={drop_heads} leaves {planned(drop_heads)['num_attention_heads']} attention heads, "
                       f"which transformers' {config['model_type']} config (read by mlx_lm.load) refuses: {why}; "
                       f"drop_heads that work here: {allowed or 'none'}")


def check_count(value, name: str, limit: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise SLMError(f"{name} must be a whole number >= 0, not {value!r}")
    if value >= limit:
        raise SLMError(f"{name}={value} would remove all {limit} {what}; at most {limit - 1}")
    return int(value)


def prune_structured(model, mlp_fraction: float = 0.0, drop_heads: int = 0, drop_layers: int = 0, calib=None,
                     tokenizer=None, num_samples: int = DEFAULT_NUM_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN,
                     batch_size: int = 4, progress: bool = True):
    """Shrink ``model`` in place (numpy or MLX) and return it.

    mlp_fraction: fraction of each MLP's intermediate channels to remove, in [0, 1); every layer
    keeps ``intermediate_size - round(mlp_fraction * intermediate_size)`` channels.
    drop_heads: KV groups to remove per layer (a KV head together with the
    ``num_attention_heads / num_key_value_heads`` query heads that share it).
    drop_layers: decoder blocks to remove (lowest Block Influence first).
    calib / tokenizer / num_samples / seq_len: calibration text, as for :func:`mlx_slm.quantize`.
    Every choice is activation-based, so calibration text is required. The model must not be quantized.
    Records the pass in ``model_config(model)["mlx_slm"]["pruning"]``.
    """
    config = check_float_model(model, "prune")
    layers = int(config["num_hidden_layers"])
    num_heads = int(config["num_attention_heads"])
    num_kv_heads = int(config.get("num_key_value_heads") or num_heads)
    intermediate = int(config["intermediate_size"])
    try:
        mlp_fraction = float(mlp_fraction)
    except (TypeError, ValueError):
        raise SLMError(f"mlp_fraction must be a number in [0, 1), not {mlp_fraction!r}") from None
    if not 0.0 <= mlp_fraction < 1.0:
        raise SLMError(f"mlp_fraction must be in [0, 1) (the fraction of MLP channels removed), not {mlp_fraction}")
    removed_channels = int(np.floor(mlp_fraction * intermediate + 0.5))
    if removed_channels >= intermediate:
        raise SLMError(f"mlp_fraction={mlp_fraction} would remove all {intermediate} MLP channels")
    drop_heads = check_count(drop_heads, "drop_heads", num_kv_heads, "KV heads (with their query heads)")
    drop_layers = check_count(drop_layers, "drop_layers", layers, "layers")
    if not (removed_channels or drop_heads or drop_layers):
        raise SLMError("nothing to prune: give mlp_fraction > 0 (at least one channel), drop_heads or drop_layers")
    if calib is None:
        raise SLMError("structured pruning ranks channels, heads and layers on calibration text: pass calib=<.txt/"
                       ".jsonl path or list of strings> (--calib FILE)")
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // num_heads)
    check_head_count(config, drop_heads, num_heads, num_kv_heads, head_dim)
    tokens, calibration = calibration_windows(tokenizer, calib, num_samples, seq_len)
    view = access(model)
    dtypes = view.dtypes()
    before = count_parameters(model)
    engine = view.numpy_engine()
    if engine.head_dim * num_heads != engine.dense("model.layers.0.self_attn.q_proj").shape[0]:
        raise SLMError("the attention projections do not match num_attention_heads x head_dim")
    record = {"kind": "structured", "mlp_fraction": mlp_fraction, "drop_heads": drop_heads,
              "drop_layers": drop_layers, "calibration": calibration}
    weights, new_config = dict(engine.weights), dict(config)
    if drop_layers:
        influence = block_influence(engine, tokens, batch_size, progress)
        dropped = sorted(np.argsort(influence, kind="stable")[:drop_layers].tolist())
        record["block_influence"] = [round(float(v), 6) for v in influence]
        record["dropped_layers"] = dropped
        new_config, weights = drop_layers_from(new_config, weights, [i for i in range(layers) if i not in dropped])
        engine = type(engine)(new_config, weights)
    if removed_channels or drop_heads:
        engine.drop_cache()
        channels, groups = choose_width(engine, tokens, intermediate - removed_channels if removed_channels else None,
                                        num_kv_heads - drop_heads if drop_heads else None, batch_size, progress)
        engine.drop_cache()
        new_config, weights = slice_width(new_config, weights, channels, groups, num_heads, num_kv_heads,
                                          engine.head_dim)
        if groups:
            record["kept_kv_heads"] = {str(k): v.tolist() for k, v in groups.items()}
    new_config["head_dim"] = engine.head_dim
    weights = {name: round_to(value, dtypes[name]) if value.dtype != dtypes.get(name, value.dtype) else value
               for name, value in weights.items()}
    view.replace(new_config, weights)
    record["parameters"] = {"before": before, "after": count_parameters(model)}
    add_record(model, record)
    return model
