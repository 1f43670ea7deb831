"""The MIL program (iOS 18) of a Llama-family model with a stateful KV cache.

Contract: what swift-transformers' ``LanguageModelWithStatefulKVCache`` sends
(Sources/Models/LanguageModel.swift): on prefill ``inputIds`` [1, N] with a zero
``causalMask`` [1, 1, 1, N + 1]; on each later step the newest token [1, 1] with a
zero ``causalMask`` [1, 1, 1, S + 1], S = tokens seen including it. So:

- inputs ``inputIds`` int32 [1, T] and ``causalMask`` fp16 [1, 1, 1 or T, P + T + 1];
  P, the position of the first token, is ``causalMask.shape[3] - 1 - inputIds.shape[1]``;
- the program masks causally itself (key j is hidden from query i when j > P + i), so an
  all-zero mask is enough. The mask's columns 1 .. P + T are added to the scores of keys
  0 .. P + T - 1 (broadcast over queries when it has one row); column 0 is ignored
  (it stands for the empty cache row the reference PyTorch export leaves before token 0);
- states ``keyCache`` / ``valueCache`` fp16 [layers, kv_heads, max_context, head_dim],
  rows P .. P+T-1 written with ``slice_update`` + ``coreml_update_state``;
- output ``logits`` [1, T, vocab], in the compute dtype.

An export with ``shapes="enumerated"`` (:class:`~.coreml_options.CoreMLOptions`) takes ``position``
int32 [1] (P) instead of ``causalMask`` and attends over the whole cache, masked by the program, so
every inner shape follows T alone. With ``logits="last"`` only the last position is projected:
``logits`` [1, 1, vocab].

Compute precision "float16": activations fp16; RMSNorm squares and averages in
fp32 (an fp16 square overflows above 256). "float32": activations, attention,
RoPE tables and logits fp32; weights stay as stored (fp16 or compressed) and are
cast when used; the states stay fp16 (Core ML's only state type), cast on write
and on read.

:class:`LlamaProgramBuilder` is also the base of other decoders
(:mod:`.coreml_gemma3`): they override the hooks ``norm_weight``, ``activation``,
``embed``, ``layer_inputs`` and ``block``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..models.numpy_llama import rope_inverse_frequencies
from .coreml_options import CoreMLOptions
from .weights import matrix

INPUT_IDS, CAUSAL_MASK, POSITION, KEY_CACHE, VALUE_CACHE, LOGITS = (
    "inputIds", "causalMask", "position", "keyCache", "valueCache", "logits")
COMPUTE_DTYPES = {"float16": ("fp16", np.float16), "float32": ("fp32", np.float32)}  # MIL name, numpy type


class Step(NamedTuple):
    """What every layer of one call shares: positions P (``past``) and P + T (``end``), int32
    scalars; the query positions P .. P+T-1 (``positions``, [T] or, enumerated, [1, T]; as
    ``queries`` [T, 1]) and the key positions the attention reads, 0 .. P+T-1 (or, enumerated,
    the whole cache 0 .. max_context-1) as ``keys`` [1, E] (int32); and the two cache states."""

    past: object
    end: object
    positions: object
    queries: object
    keys: object
    key_cache: object
    value_cache: object


def mil_name(path: str) -> str:
    return path.replace(".", "_")


def rope_tables(inv_freq: np.ndarray, max_context: int, dtype):
    """cos, sin [max_context, 2 * len(inv_freq)] (``dtype``) for rotate-half RoPE at positions 0 .. max_context-1."""
    angles = np.arange(max_context, dtype=np.float64)[:, None] * inv_freq.astype(np.float64)[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


class LlamaProgramBuilder:
    """Emits the ops of one forward pass; ``weights`` come from :func:`~.gemma3.program_weights`."""

    def __init__(self, mb, config: dict, weights: dict, weight_var, max_context: int,
                 compute_precision: str = "float16", options: CoreMLOptions | None = None):
        self.mb, self.config, self.weights, self.weight_var = mb, config, weights, weight_var
        self.max_context = max_context
        self.options = options or CoreMLOptions()
        self.enumerated = self.options.shapes == "enumerated"
        self.dtype, self.np_dtype = COMPUTE_DTYPES[compute_precision]
        self.num_layers = int(config["num_hidden_layers"])
        self.num_heads = int(config["num_attention_heads"])
        self.num_kv_heads = int(config.get("num_key_value_heads") or self.num_heads)
        self.head_dim = int(config.get("head_dim") or config["hidden_size"] // self.num_heads)
        self.eps = float(config.get("rms_norm_eps", 1e-6))
        self.tied = "lm_head.weight" not in weights and "lm_head" not in weights
        self._vars = {}
        self._latest = {}

    def cache_shape(self) -> tuple:
        return (self.num_layers, self.num_kv_heads, self.max_context, self.head_dim)

    def weight(self, path: str):
        """The [N, K] var of layer ``path`` in the compute dtype (created once, shared by every use):
        the stored fp16 (or compressed) matrix, cast to fp32 for a float32 program."""
        if path not in self._vars:
            stored = self.weight_var(self.mb, matrix(self.weights, path), mil_name(path))
            self._vars[path] = self.to_compute(stored)
        return self._vars[path]

    def to_compute(self, x):
        """An fp16 var in the compute dtype (itself for a float16 program)."""
        return x if self.dtype == "fp16" else self.mb.cast(x=x, dtype=self.dtype)

    def to_state(self, x):
        """A compute-dtype var as fp16, the states' type (itself for a float16 program)."""
        return x if self.dtype == "fp16" else self.mb.cast(x=x, dtype="fp16")

    def vector(self, name: str, values=None):
        """A constant [D] in the compute dtype: ``values``, by default the model's tensor ``name``."""
        values = self.weights[name] if values is None else values
        return self.mb.const(val=np.asarray(values).astype(self.np_dtype), name=mil_name(name))

    def linear(self, path: str, x):
        """x [1, T, K] -> [1, T, N], with the layer's bias if it has one."""
        bias = {"bias": self.vector(f"{path}.bias")} if f"{path}.bias" in self.weights else {}
        return self.mb.linear(x=x, weight=self.weight(path), **bias)

    def norm_weight(self, path: str):
        """The [D] vector RMSNorm ``path`` multiplies by."""
        return self.vector(f"{path}.weight")

    def rms_norm(self, path: str, x):
        """x [..., D] -> [..., D] (compute dtype); statistics in fp32."""
        mb = self.mb
        wide = x if self.dtype == "fp32" else mb.cast(x=x, dtype="fp32")
        mean_square = mb.reduce_mean(x=mb.mul(x=wide, y=wide), axes=[-1], keep_dims=True)
        inverse = mb.rsqrt(x=mean_square, epsilon=self.eps)
        normed = mb.mul(x=wide, y=inverse)
        if self.dtype == "fp16":
            normed = mb.cast(x=normed, dtype="fp16")
        return mb.mul(x=normed, y=self.norm_weight(path))

    def heads(self, x, count: int):
        """[1, T, count*Dh] -> [1, count, T, Dh]."""
        mb = self.mb
        return mb.transpose(x=mb.reshape(x=x, shape=[1, -1, count, self.head_dim]), perm=[0, 2, 1, 3])

    def rope(self, x, cos, sin):
        """Rotate-half RoPE; x [1, H, T, Dh], cos/sin [(1,) T, Dh]."""
        mb = self.mb
        half = self.head_dim // 2
        first = mb.slice_by_index(x=x, begin=[0, 0, 0, 0], end=[0, 0, 0, half], end_mask=[True, True, True, False])
        second = mb.slice_by_index(x=x, begin=[0, 0, 0, half], end=[0, 0, 0, 0], end_mask=[True, True, True, True])
        rotated = mb.concat(values=[mb.mul(x=second, y=self.np_dtype(-1)), first], axis=-1)
        return mb.add(x=mb.mul(x=x, y=cos), y=mb.mul(x=rotated, y=sin))

    def rope_rows(self, name: str, inv_freq: np.ndarray, step: Step):
        """(cos, sin) [(1,) T, Dh] of positions P .. P+T-1, gathered from constant tables ``name``_cos/_sin."""
        mb = self.mb
        cos_table, sin_table = rope_tables(inv_freq, self.max_context, self.np_dtype)
        return tuple(mb.gather(x=mb.const(val=table, name=f"{name}_{kind}"), indices=step.positions, axis=0)
                     for kind, table in (("cos", cos_table), ("sin", sin_table)))

    def current(self, state):
        """The state's latest value: read once, then the previous update's result.

        Chaining the updates (instead of a read_state per layer) is what keeps
        them ordered: coremltools merges identical read_state ops, which would
        make every layer start from the state as it was before layer 0 wrote.
        """
        if state.name not in self._latest:
            self._latest[state.name] = self.mb.read_state(input=state)
        return self._latest[state.name]

    def write_cache(self, state, layer: int, update, step: Step):
        """Write update [1, KVH, T, Dh] at rows P..P+T-1 of ``layer``; return rows 0..P+T-1 (enumerated: every
        row, a fixed shape) [1, KVH, E, Dh] (compute dtype; the state itself is fp16)."""
        mb = self.mb
        begin = mb.concat(values=[np.array([layer, 0], np.int32), mb.reshape(x=step.past, shape=[1]),
                                  np.array([0], np.int32)], axis=0)
        stop = mb.concat(values=[np.array([layer + 1, self.num_kv_heads], np.int32),
                                 mb.reshape(x=step.end, shape=[1]), np.array([self.head_dim], np.int32)], axis=0)
        cache = mb.slice_update(x=self.current(state), update=self.to_state(update), begin=begin, end=stop)
        cache = mb.coreml_update_state(state=state, value=cache)
        self._latest[state.name] = cache
        start = np.array([layer, 0, 0, 0], np.int32)
        if self.enumerated:
            stop = np.array([layer + 1, self.num_kv_heads, self.max_context, self.head_dim], np.int32)
        return self.to_compute(mb.slice_by_index(x=cache, begin=start, end=stop))

    def repeat_kv(self, x):
        """GQA: [1, KVH, E, Dh] -> [1, H, E, Dh], head h reading KV head h // (H / KVH)."""
        repeats = self.num_heads // self.num_kv_heads
        if repeats == 1:
            return x
        mb = self.mb
        x = mb.expand_dims(x=x, axes=[2])
        x = mb.tile(x=x, reps=[1, 1, repeats, 1, 1])
        return mb.reshape(x=x, shape=[1, self.num_heads, -1, self.head_dim])

    def attention(self, layer: int, x, rope, mask, step: Step):
        """x [1, T, D] -> [1, T, D]; rope = (cos, sin) [(1,) T, Dh]; mask [1, 1, T, E] or [T, E] additive."""
        mb, prefix = self.mb, f"model.layers.{layer}.self_attn"
        queries = self.heads(self.linear(f"{prefix}.q_proj", x), self.num_heads)
        keys = self.heads(self.linear(f"{prefix}.k_proj", x), self.num_kv_heads)
        values = self.heads(self.linear(f"{prefix}.v_proj", x), self.num_kv_heads)
        if f"{prefix}.q_norm.weight" in self.weights:
            queries = self.rms_norm(f"{prefix}.q_norm", queries)
            keys = self.rms_norm(f"{prefix}.k_norm", keys)
        queries, keys = self.rope(queries, *rope), self.rope(keys, *rope)
        keys = self.repeat_kv(self.write_cache(step.key_cache, layer, keys, step))
        values = self.repeat_kv(self.write_cache(step.value_cache, layer, values, step))
        out = mb.scaled_dot_product_attention(query=queries, key=keys, value=values, attn_mask=mask)
        out = mb.reshape(x=mb.transpose(x=out, perm=[0, 2, 1, 3]), shape=[1, -1, self.num_heads * self.head_dim])
        return self.linear(f"{prefix}.o_proj", out)

    def activation(self, gate):
        """The gated MLP's activation (SwiGLU: SiLU)."""
        return self.mb.silu(x=gate)

    def mlp(self, layer: int, x):
        mb, prefix = self.mb, f"model.layers.{layer}.mlp"
        gate = self.activation(self.linear(f"{prefix}.gate_proj", x))
        return self.linear(f"{prefix}.down_proj", mb.mul(x=gate, y=self.linear(f"{prefix}.up_proj", x)))

    def embed(self, input_ids):
        """inputIds [1, T] -> [1, T, D]: rows of the embedding matrix."""
        return self.mb.gather(x=self.weight("model.embed_tokens"), indices=input_ids, axis=0)

    def layer_inputs(self, mask, step: Step) -> list:
        """Per layer: (rope (cos, sin), attention mask). Llama: one RoPE and the causal mask."""
        rope = self.rope_rows("rope", rope_inverse_frequencies(self.config, self.head_dim), step)
        return [(rope, mask)] * self.num_layers

    def step(self, input_ids, context, key_cache, value_cache) -> Step:
        """Positions, T = inputIds.shape[1]. Ranged: from the shapes, P + T = causalMask.shape[3] - 1.
        Enumerated: P = position[0], and the query positions P + (0 .. T-1) come from a cumulative sum
        over inputIds, so their shape is inputIds' (a range's length would depend on values)."""
        mb = self.mb
        count = mb.gather(x=mb.shape(x=input_ids), indices=1)
        if self.enumerated:
            past = mb.gather(x=context, indices=0)
            end = mb.add(x=past, y=count)
            ones = mb.add(x=mb.mul(x=input_ids, y=np.int32(0)), y=np.int32(1))
            positions = mb.add(x=mb.cumsum(x=ones, axis=1, exclusive=True), y=past)  # [1, T]
            queries = mb.transpose(x=positions, perm=[1, 0])
            keys = mb.const(val=np.arange(self.max_context, dtype=np.int32)[None], name="cache_positions")
        else:
            end = mb.sub(x=mb.gather(x=mb.shape(x=context), indices=3), y=np.int32(1))
            past = mb.sub(x=end, y=count)
            positions = mb.range_1d(start=past, end=end, step=1)  # [T]
            queries = mb.expand_dims(x=positions, axes=[1])
            keys = mb.expand_dims(x=mb.range_1d(start=0, end=end, step=1), axes=[0])
        return Step(past=past, end=end, positions=positions, queries=queries, keys=keys, key_cache=key_cache,
                    value_cache=value_cache)

    def causal_mask(self, context, step: Step):
        """[1, 1, T, E] or [T, E] (compute dtype): -inf where a key comes after its query, else (ranged)
        causalMask's columns 1 .. P + T or (enumerated) 0."""
        mb = self.mb
        if self.enumerated:  # (a [1, E] row, not a scalar: select takes its shape from a and b)
            given = np.zeros((1, self.max_context), self.np_dtype)
        else:
            given = mb.slice_by_index(x=self.to_compute(context), begin=[0, 0, 0, 1], end=[0, 0, 0, 0],
                                      end_mask=[True, True, True, True])
        later = mb.greater(x=step.keys, y=step.queries)  # [T, E]
        return mb.select(cond=later, a=self.np_dtype(-np.inf), b=given)

    def block(self, layer: int, h, rope, mask, step: Step):
        """One decoder layer, pre-norm: h + attention(norm(h)), then + mlp(norm(h))."""
        mb, prefix = self.mb, f"model.layers.{layer}"
        h = mb.add(x=h, y=self.attention(layer, self.rms_norm(f"{prefix}.input_layernorm", h), rope, mask, step))
        return mb.add(x=h, y=self.mlp(layer, self.rms_norm(f"{prefix}.post_attention_layernorm", h)))

    def forward(self, input_ids, context, key_cache, value_cache):
        """inputIds [1, T], causalMask [1, 1, 1 or T, P + T + 1] (enumerated: position [1]) -> logits
        [1, T, vocab] (logits="last": [1, 1, vocab]), compute dtype."""
        mb = self.mb
        step = self.step(input_ids, context, key_cache, value_cache)
        inputs = self.layer_inputs(self.causal_mask(context, step), step)
        h = self.embed(input_ids)
        for layer, (rope, layer_mask) in enumerate(inputs):
            h = self.block(layer, h, rope, layer_mask, step)
        if self.options.logits == "last":
            h = mb.slice_by_index(x=h, begin=[0, -1, 0], end=[0, 0, 0], end_mask=[True, True, True])
        h = self.rms_norm("model.norm", h)
        head = "model.embed_tokens" if self.tied else "lm_head"
        return mb.linear(x=h, weight=self.weight(head), name=LOGITS)

    def program(self):
        """The ``coremltools`` MIL Program (opset iOS 18)."""
        import coremltools as ct
        from coremltools.converters.mil.mil import get_new_symbol, types

        mb = self.mb
        states = [mb.StateTensorSpec(self.cache_shape(), dtype=types.fp16) for _ in (KEY_CACHE, VALUE_CACHE)]
        lengths = self.options.query_lengths or ()
        ids = mb.TensorSpec((1, lengths[0] if len(lengths) == 1 else get_new_symbol()), dtype=types.int32)
        if self.enumerated:
            @mb.program(input_specs=[ids, mb.TensorSpec((1,), dtype=types.int32), *states],
                        opset_version=ct.target.iOS18)
            def main(inputIds, position, keyCache, valueCache):  # the contract's names
                return self.forward(inputIds, position, keyCache, valueCache)
        else:
            mask = mb.TensorSpec((1, 1, get_new_symbol(), get_new_symbol()), dtype=types.fp16)

            @mb.program(input_specs=[ids, mask, *states], opset_version=ct.target.iOS18)
            def main(inputIds, causalMask, keyCache, valueCache):  # the contract's names
                return self.forward(inputIds, causalMask, keyCache, valueCache)

        return main
