"""The Core AI program (``main``) of a Llama-family model, and a runner for saved programs.

Contract (Apple's coreai-models LLM runner, ``CoreAISequentialEngine``):

- inputs ``input_ids`` int32 [1, T] and ``position_ids`` int32 [1, P + T], the positions of every
  token so far (0 .. P+T-1): the new tokens sit at P = len(position_ids) - len(input_ids);
- states ``keyCache`` / ``valueCache`` [layers, 1, kv_heads, S, head_dim] in the compute dtype,
  S >= P + T chosen by the caller (the runner grows them); rows P .. P+T-1 are written in place;
- output ``logits`` float16 [1, T, vocab] (the runner reads float16 logits).

Queries see the keys whose position is at most their own (causal inside a prompt). RoPE angles
come from a constant table [max_context, head_dim] gathered at the new tokens' positions.
Activations are [T, D]; a linear layer is ``(W @ x^T)^T`` with W [N, K] as the model stores it.

:class:`LlamaGraph` is also the base of other decoders (:mod:`.coreai_gemma3`): they override the
hooks ``norm_weight``, ``activation``, ``embed``, ``layer_views`` and ``block``, and set
``attention_scale``; :meth:`LlamaGraph.view` gives a layer a sliding window.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..models.numpy_llama import rope_inverse_frequencies
from .coreai_weights import emit, encode, layer_record
from .weights import matrix

INPUT_IDS, POSITION_IDS, KEY_CACHE, VALUE_CACHE, LOGITS = (
    "input_ids", "position_ids", "keyCache", "valueCache", "logits")
COMPUTE_DTYPES = {"float16": np.float16, "float32": np.float32}
BIG = 1 << 30  # a slice end past any dimension (slice ends are clamped)


def i32(*values) -> np.ndarray:
    return np.array(values, np.int32)


def rope_tables(inv_freq: np.ndarray, max_context: int) -> tuple:
    """cos, sin float32 [max_context, 2 * len(inv_freq)] at positions 0 .. max_context-1, computed as the
    numpy model computes them (float32 angles)."""
    angles = np.arange(max_context, dtype=np.float32)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


class LlamaGraph:
    """Emits one forward pass; ``weights`` come from :func:`~.gemma3.program_weights`, ``ops`` is
    ``coreai.authoring`` (imported by the caller)."""

    def __init__(self, ops, config: dict, weights: dict, max_context: int, compute_precision: str):
        self.ops, self.config, self.weights, self.max_context = ops, config, weights, max_context
        self.dtype = COMPUTE_DTYPES[compute_precision]
        self.num_layers = int(config["num_hidden_layers"])
        self.num_heads = int(config["num_attention_heads"])
        self.num_kv_heads = int(config.get("num_key_value_heads") or self.num_heads)
        self.head_dim = int(config.get("head_dim") or config["hidden_size"] // self.num_heads)
        self.eps = float(config.get("rms_norm_eps", 1e-6))
        self.attention_scale = self.head_dim**-0.5
        self.tied = "lm_head.weight" not in weights and "lm_head" not in weights
        self.layers = {}  # layer path -> its manifest record (the encodings themselves are not kept)
        self._matrices = {}

    def cache_type(self):
        return self.ops.TensorType((self.num_layers, 1, self.num_kv_heads, -1, self.head_dim), self.dtype)

    def constant(self, values: np.ndarray):
        from coreai.authoring.constant import constant

        return constant(np.asarray(values).astype(self.dtype))

    def matrix(self, path: str):
        """Layer ``path``'s [N, K] matrix in the compute dtype (decoded once, shared by every use)."""
        if path not in self._matrices:
            weight = matrix(self.weights, path)
            encoding = encode(weight)
            self.layers[path] = layer_record(path, weight, encoding)
            dense = emit(encoding, path)
            self._matrices[path] = dense if self.dtype == np.float32 else self.ops.cast(dense, self.dtype)
        return self._matrices[path]

    def linear(self, path: str, x):
        """x [T, K] -> [T, N] (+ the layer's bias)."""
        ops = self.ops
        out = ops.transpose(ops.batch_matmul(self.matrix(path), ops.transpose(x, np.array([1, 0], np.uint32))),
                            np.array([1, 0], np.uint32))
        bias = self.weights.get(f"{path}.bias")
        return out if bias is None else ops.broadcasting_add(out, self.constant(bias[None, :]))

    def norm_weight(self, path: str) -> np.ndarray:
        """The [D] vector RMSNorm ``path`` multiplies by."""
        return self.weights[f"{path}.weight"]

    def rms_norm(self, path: str, x):
        """x [..., D] -> [..., D]; statistics in float32."""
        ops = self.ops
        wide = x if self.dtype == np.float32 else ops.cast(x, np.float32)
        mean_square = ops.reduce_mean(ops.mul(wide, wide), i32(-1))
        inverse = ops.rsqrt(ops.broadcasting_add(mean_square, np.array([self.eps], np.float32)))
        normed = ops.broadcasting_mul(wide, inverse)
        normed = normed if self.dtype == np.float32 else ops.cast(normed, self.dtype)
        return ops.broadcasting_mul(normed, self.constant(self.norm_weight(path)))

    def heads(self, x, count: int):
        """[T, count*Dh] -> [count, T, Dh]."""
        ops = self.ops
        return ops.transpose(ops.reshape(x, i32(-1, count, self.head_dim)), np.array([1, 0, 2], np.uint32))

    def rope(self, x, cos, sin):
        """Rotate-half RoPE; x [H, T, Dh], cos/sin [T, Dh]."""
        ops, half = self.ops, self.head_dim // 2
        first = ops.slice_(x, i32(0, 0, 0), i32(BIG, BIG, half), i32(1, 1, 1))
        second = ops.slice_(x, i32(0, 0, half), i32(BIG, BIG, BIG), i32(1, 1, 1))
        rotated = ops.concat(2, [ops.broadcasting_mul(second, np.array([-1], self.dtype)), first])
        return ops.broadcasting_add(ops.broadcasting_mul(x, cos), ops.broadcasting_mul(rotated, sin))

    def cached(self, cache, layer: int, update, step, view):
        """Write update [KVH, T, Dh] at rows P .. P+T-1 of ``layer``; return (the new cache, the rows ``view``
        reads, first .. P+T-1 of ``layer``, as [KVH, count, Dh])."""
        ops, heads, dh = self.ops, self.num_kv_heads, self.head_dim
        stop = ops.concat(0, [i32(layer + 1, 1, heads), step.end, i32(dh)])
        start = ops.concat(0, [i32(layer, 0, 0), step.past, i32(0)])
        update = ops.reshape(update, i32(1, 1, heads, -1, dh))
        cache = ops.slice_update(cache, start, stop, i32(1, 1, 1, 1, 1), update)
        rows = ops.slice_(cache, ops.concat(0, [i32(layer, 0, 0), view.first, i32(0)]), stop, i32(1, 1, 1, 1, 1))
        return cache, ops.reshape(rows, i32(heads, -1, dh))

    def attention(self, layer: int, x, step, view, caches):
        """x [T, D] -> [T, D], attending as ``view`` says; ``caches`` (keys, values) are replaced by their
        updated values."""
        ops, prefix = self.ops, f"model.layers.{layer}.self_attn"
        heads, kv_heads, dh = self.num_heads, self.num_kv_heads, self.head_dim
        queries = self.heads(self.linear(f"{prefix}.q_proj", x), heads)
        keys = self.heads(self.linear(f"{prefix}.k_proj", x), kv_heads)
        values = self.heads(self.linear(f"{prefix}.v_proj", x), kv_heads)
        if f"{prefix}.q_norm.weight" in self.weights:
            queries = self.rms_norm(f"{prefix}.q_norm", queries)
            keys = self.rms_norm(f"{prefix}.k_norm", keys)
        queries, keys = self.rope(queries, view.cos, view.sin), self.rope(keys, view.cos, view.sin)
        caches[0], keys = self.cached(caches[0], layer, keys, step, view)
        caches[1], values = self.cached(caches[1], layer, values, step, view)
        # query head h reads KV head h // repeats: group the queries of each KV head as [KVH, repeats*T, Dh]
        repeats = heads // kv_heads
        queries = ops.broadcasting_mul(queries, np.array([self.attention_scale], self.dtype))
        scores = ops.batch_matmul(ops.reshape(queries, i32(kv_heads, -1, dh)),
                                  ops.transpose(keys, np.array([0, 2, 1], np.uint32)))
        scores = ops.reshape(scores, ops.concat(0, [i32(kv_heads, repeats), step.length, view.count]))
        scores = ops.broadcasting_where(view.hidden, np.array([-np.inf], self.dtype), scores)
        probs = ops.reshape(ops.softmax(scores, np.array(-1, np.int32)), ops.concat(0, [i32(kv_heads, -1), view.count]))
        out = ops.reshape(ops.batch_matmul(probs, values), i32(heads, -1, dh))
        out = ops.reshape(ops.transpose(out, np.array([1, 0, 2], np.uint32)), i32(-1, heads * dh))
        return self.linear(f"{prefix}.o_proj", out)

    def activation(self, gate):
        """The gated MLP's activation (SwiGLU: SiLU)."""
        return self.ops.silu(gate)

    def mlp(self, layer: int, x):
        ops, prefix = self.ops, f"model.layers.{layer}.mlp"
        gate = self.activation(self.linear(f"{prefix}.gate_proj", x))
        return self.linear(f"{prefix}.down_proj", ops.mul(gate, self.linear(f"{prefix}.up_proj", x)))

    def embed(self, input_ids):
        """input_ids [1, T] -> [T, D]: rows of the embedding matrix."""
        return self.ops.gather_nd(self.matrix("model.embed_tokens"), self.ops.reshape(input_ids, i32(-1, 1)))

    def step(self, input_ids, position_ids):
        """What every layer of one call shares (a :class:`Step`)."""
        ops = self.ops
        length = ops.cast(ops.slice_(ops.get_shape(input_ids), i32(1), i32(2), i32(1)), np.int32)
        end = ops.cast(ops.slice_(ops.get_shape(position_ids), i32(1), i32(2), i32(1)), np.int32)
        past = ops.sub(end, length)
        queries = ops.reshape(ops.slice_(position_ids, ops.concat(0, [i32(0), past]), i32(1, BIG), i32(1, 1)),
                              i32(-1, 1))  # [T, 1]
        return Step(length=length, past=past, end=end, queries=queries, keys=ops.reshape(position_ids, i32(1, -1)))

    def view(self, step, inv_freq: np.ndarray, window: int | None = None):
        """A :class:`View` with RoPE of angular speeds ``inv_freq``, causal; with a ``window``, keys that many
        positions or more behind their query are hidden too, and the cache rows before the first query's
        window (rows 0 .. P-window) are not read."""
        ops = self.ops
        cos, sin = (ops.gather_nd(self.constant(table), step.queries)
                    for table in rope_tables(inv_freq, self.max_context))
        first, keys = i32(0), step.keys
        if window is not None:
            first = ops.broadcasting_maximum(ops.sub(step.past, i32(window - 1)), i32(0))
            keys = ops.slice_(keys, ops.concat(0, [i32(0), first]), i32(1, BIG), i32(1, 1))
        hidden = ops.broadcasting_greater(keys, step.queries)  # [T, count]
        if window is not None:
            behind = ops.broadcasting_sub(step.queries, keys)
            hidden = ops.broadcasting_or(hidden, ops.broadcasting_greater(behind, i32(window - 1)))
        return View(cos=cos, sin=sin, first=first, count=ops.sub(step.end, first), hidden=hidden)

    def layer_views(self, step) -> list:
        """Per layer, how it attends (a :class:`View`). Llama: one RoPE, causal, every cached row."""
        return [self.view(step, rope_inverse_frequencies(self.config, self.head_dim))] * self.num_layers

    def block(self, layer: int, h, step, view, caches):
        """One decoder layer, pre-norm: h + attention(norm(h)), then + mlp(norm(h))."""
        ops, prefix = self.ops, f"model.layers.{layer}"
        h = ops.add(h, self.attention(layer, self.rms_norm(f"{prefix}.input_layernorm", h), step, view, caches))
        return ops.add(h, self.mlp(layer, self.rms_norm(f"{prefix}.post_attention_layernorm", h)))

    def forward(self, input_ids, position_ids, caches: list):
        """input_ids [1, T], position_ids [1, P+T] -> logits float16 [1, T, vocab]; ``caches`` updated."""
        ops = self.ops
        step = self.step(input_ids, position_ids)
        h = self.embed(input_ids)
        for layer, view in enumerate(self.layer_views(step)):
            h = self.block(layer, h, step, view, caches)
        logits = self.linear("model.embed_tokens" if self.tied else "lm_head", self.rms_norm("model.norm", h))
        logits = ops.reshape(logits, i32(1, -1, int(self.config["vocab_size"])))
        return logits if self.dtype == np.float16 else ops.cast(logits, np.float16)

    def program(self):
        """The ``AIProgram``: graph ``main`` with the contract's inputs, states and output."""
        from coreai._compiler.dialects import coreai as raw
        from coreai._compiler.dialects._coreai_ops_gen import OutputOp
        from coreai.authoring.graph_builder import GraphOp

        ops = self.ops
        module = ops.Module.create()
        with module:
            ids_type = ops.TensorType((1, -1), np.int32)._to_mlir_type()
            cache_type = ops.HandleType(self.cache_type())._to_mlir()
            logits_type = ops.TensorType((1, -1, int(self.config["vocab_size"])), np.float16)._to_mlir_type()
            graph = GraphOp("main", [ids_type, ids_type, cache_type, cache_type],
                            [logits_type, ops.TokenType()._to_mlir(), ops.TokenType()._to_mlir()],
                            [INPUT_IDS, POSITION_IDS, KEY_CACHE, VALUE_CACHE],
                            [LOGITS, f"{KEY_CACHE}Written", f"{VALUE_CACHE}Written"])  # one token per handle
            with graph.block:
                input_ids, position_ids, *handles = graph.arguments
                reads = [raw.read_handle(handle, raw.create_token()) for handle in handles]
                caches = [ops.Value._from_mlir(value) for value, _ in reads]
                logits = self.forward(ops.Value._from_mlir(input_ids), ops.Value._from_mlir(position_ids), caches)
                tokens = [raw.write_handle(handle, cache._to_mlir(), token)
                          for handle, cache, (_, token) in zip(handles, caches, reads)]
                OutputOp([logits._to_mlir(), *tokens])
        return ops.AIProgram(module)


class Step(NamedTuple):
    """Shared by every layer of one call: T (``length``), P (``past``), P + T (``end``) as int32 [1]; the
    new tokens' positions ``queries`` int32 [T, 1] and every key's ``keys`` int32 [1, P+T]."""

    length: object
    past: object
    end: object
    queries: object
    keys: object


class View(NamedTuple):
    """How a layer attends in one call: cos/sin [T, Dh] at the new positions; it reads cache rows ``first`` ..
    P+T-1 (int32 [1]; ``count`` of them, int32 [1]); ``hidden`` bool [T, count], true where a key is masked."""

    cos: object
    sin: object
    first: object
    count: object
    hidden: object
