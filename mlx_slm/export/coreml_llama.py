"""The MIL program (iOS 18) of a Llama-family model with a stateful KV cache.

Contract (swift-transformers' stateful models, SLMKit's ``CoreMLLanguageModel``):

- inputs ``inputIds`` int32 [1, T] and ``causalMask`` fp16 [1, 1, T, P + T]
  (0 where a query may look, -inf elsewhere); the position of the first token,
  P, is ``causalMask.shape[3] - causalMask.shape[2]``;
- states ``keyCache`` / ``valueCache`` fp16 [layers, kv_heads, max_context, head_dim],
  rows P .. P+T-1 written with ``slice_update`` + ``coreml_update_state``;
- output ``logits`` fp16 [1, T, vocab].

Activations are fp16; RMSNorm squares and averages in fp32 (an fp16 square
overflows above 256).
"""

from __future__ import annotations

import numpy as np

from ..models.numpy_llama import rope_inverse_frequencies
from .weights import matrix

INPUT_IDS, CAUSAL_MASK, KEY_CACHE, VALUE_CACHE, LOGITS = (
    "inputIds", "causalMask", "keyCache", "valueCache", "logits")


def mil_name(path: str) -> str:
    return path.replace(".", "_")


def rope_tables(config: dict, head_dim: int, max_context: int):
    """cos, sin fp16 [max_context, head_dim] for rotate-half RoPE at positions 0 .. max_context-1."""
    inv_freq = rope_inverse_frequencies(config, head_dim).astype(np.float64)
    angles = np.arange(max_context, dtype=np.float64)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float16), np.sin(angles).astype(np.float16)


class LlamaProgramBuilder:
    """Emits the ops of one forward pass; ``weights`` come from :func:`~.weights.model_weights`."""

    def __init__(self, mb, config: dict, weights: dict, weight_var, max_context: int):
        self.mb, self.config, self.weights, self.weight_var = mb, config, weights, weight_var
        self.max_context = max_context
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
        """The fp16 [N, K] var of layer ``path`` (created once, shared by every use)."""
        if path not in self._vars:
            self._vars[path] = self.weight_var(self.mb, matrix(self.weights, path), mil_name(path))
        return self._vars[path]

    def vector(self, name: str):
        return self.mb.const(val=self.weights[name].astype(np.float16), name=mil_name(name))

    def linear(self, path: str, x):
        """x [1, T, K] -> [1, T, N], with the layer's bias if it has one."""
        bias = {"bias": self.vector(f"{path}.bias")} if f"{path}.bias" in self.weights else {}
        return self.mb.linear(x=x, weight=self.weight(path), **bias)

    def rms_norm(self, path: str, x):
        """x fp16 [..., D] -> fp16 [..., D]; statistics in fp32."""
        mb = self.mb
        wide = mb.cast(x=x, dtype="fp32")
        mean_square = mb.reduce_mean(x=mb.mul(x=wide, y=wide), axes=[-1], keep_dims=True)
        inverse = mb.rsqrt(x=mean_square, epsilon=self.eps)
        normed = mb.cast(x=mb.mul(x=wide, y=inverse), dtype="fp16")
        return mb.mul(x=normed, y=self.vector(f"{path}.weight"))

    def heads(self, x, count: int):
        """[1, T, count*Dh] -> [1, count, T, Dh]."""
        mb = self.mb
        return mb.transpose(x=mb.reshape(x=x, shape=[1, -1, count, self.head_dim]), perm=[0, 2, 1, 3])

    def rope(self, x, cos, sin):
        """Rotate-half RoPE; x [1, H, T, Dh], cos/sin [T, Dh]."""
        mb = self.mb
        half = self.head_dim // 2
        first = mb.slice_by_index(x=x, begin=[0, 0, 0, 0], end=[0, 0, 0, half], end_mask=[True, True, True, False])
        second = mb.slice_by_index(x=x, begin=[0, 0, 0, half], end=[0, 0, 0, 0], end_mask=[True, True, True, True])
        rotated = mb.concat(values=[mb.mul(x=second, y=np.float16(-1)), first], axis=-1)
        return mb.add(x=mb.mul(x=x, y=cos), y=mb.mul(x=rotated, y=sin))

    def current(self, state):
        """The state's latest value: read once, then the previous update's result.

        Chaining the updates (instead of a read_state per layer) is what keeps
        them ordered: coremltools merges identical read_state ops, which would
        make every layer start from the state as it was before layer 0 wrote.
        """
        if state.name not in self._latest:
            self._latest[state.name] = self.mb.read_state(input=state)
        return self._latest[state.name]

    def write_cache(self, state, layer: int, update, past, end):
        """Write update [1, KVH, T, Dh] at rows past..end of ``layer``; return rows 0..end [1, KVH, E, Dh]."""
        mb = self.mb
        begin = mb.concat(values=[np.array([layer, 0], np.int32), mb.reshape(x=past, shape=[1]),
                                  np.array([0], np.int32)], axis=0)
        stop = mb.concat(values=[np.array([layer + 1, self.num_kv_heads], np.int32), mb.reshape(x=end, shape=[1]),
                                 np.array([self.head_dim], np.int32)], axis=0)
        cache = mb.slice_update(x=self.current(state), update=update, begin=begin, end=stop)
        cache = mb.coreml_update_state(state=state, value=cache)
        self._latest[state.name] = cache
        start = np.array([layer, 0, 0, 0], np.int32)
        return mb.slice_by_index(x=cache, begin=start, end=stop)

    def repeat_kv(self, x):
        """GQA: [1, KVH, E, Dh] -> [1, H, E, Dh], head h reading KV head h // (H / KVH)."""
        repeats = self.num_heads // self.num_kv_heads
        if repeats == 1:
            return x
        mb = self.mb
        x = mb.expand_dims(x=x, axes=[2])
        x = mb.tile(x=x, reps=[1, 1, repeats, 1, 1])
        return mb.reshape(x=x, shape=[1, self.num_heads, -1, self.head_dim])

    def attention(self, layer: int, x, cos, sin, mask, past, end, key_cache, value_cache):
        mb, prefix = self.mb, f"model.layers.{layer}.self_attn"
        queries = self.heads(self.linear(f"{prefix}.q_proj", x), self.num_heads)
        keys = self.heads(self.linear(f"{prefix}.k_proj", x), self.num_kv_heads)
        values = self.heads(self.linear(f"{prefix}.v_proj", x), self.num_kv_heads)
        if f"{prefix}.q_norm.weight" in self.weights:
            queries = self.rms_norm(f"{prefix}.q_norm", queries)
            keys = self.rms_norm(f"{prefix}.k_norm", keys)
        queries, keys = self.rope(queries, cos, sin), self.rope(keys, cos, sin)
        keys = self.repeat_kv(self.write_cache(key_cache, layer, keys, past, end))
        values = self.repeat_kv(self.write_cache(value_cache, layer, values, past, end))
        out = mb.scaled_dot_product_attention(query=queries, key=keys, value=values, attn_mask=mask)
        out = mb.reshape(x=mb.transpose(x=out, perm=[0, 2, 1, 3]), shape=[1, -1, self.num_heads * self.head_dim])
        return self.linear(f"{prefix}.o_proj", out)

    def mlp(self, layer: int, x):
        mb, prefix = self.mb, f"model.layers.{layer}.mlp"
        gate = mb.silu(x=self.linear(f"{prefix}.gate_proj", x))
        return self.linear(f"{prefix}.down_proj", mb.mul(x=gate, y=self.linear(f"{prefix}.up_proj", x)))

    def forward(self, input_ids, mask, key_cache, value_cache):
        """inputIds [1, T], causalMask [1, 1, T, E] -> logits fp16 [1, T, vocab]."""
        mb = self.mb
        mask_shape = mb.shape(x=mask)
        end = mb.gather(x=mask_shape, indices=3)
        past = mb.sub(x=end, y=mb.gather(x=mask_shape, indices=2))
        cos_table, sin_table = rope_tables(self.config, self.head_dim, self.max_context)
        rows_begin = mb.concat(values=[mb.reshape(x=past, shape=[1]), np.array([0], np.int32)], axis=0)
        rows_end = mb.concat(values=[mb.reshape(x=end, shape=[1]), np.array([self.head_dim], np.int32)], axis=0)
        cos = mb.slice_by_index(x=mb.const(val=cos_table, name="rope_cos"), begin=rows_begin, end=rows_end)
        sin = mb.slice_by_index(x=mb.const(val=sin_table, name="rope_sin"), begin=rows_begin, end=rows_end)
        h = mb.gather(x=self.weight("model.embed_tokens"), indices=input_ids, axis=0)
        for layer in range(self.num_layers):
            prefix = f"model.layers.{layer}"
            attended = self.attention(layer, self.rms_norm(f"{prefix}.input_layernorm", h), cos, sin, mask, past,
                                      end, key_cache, value_cache)
            h = mb.add(x=h, y=attended)
            h = mb.add(x=h, y=self.mlp(layer, self.rms_norm(f"{prefix}.post_attention_layernorm", h)))
        h = self.rms_norm("model.norm", h)
        head = "model.embed_tokens" if self.tied else "lm_head"
        return mb.linear(x=h, weight=self.weight(head), name=LOGITS)

    def program(self):
        """The ``coremltools`` MIL Program (opset iOS 18)."""
        import coremltools as ct
        from coremltools.converters.mil.mil import get_new_symbol, types

        mb = self.mb
        query_len, mask_query, key_len = get_new_symbol(), get_new_symbol(), get_new_symbol()
        specs = [mb.TensorSpec((1, query_len), dtype=types.int32),
                 mb.TensorSpec((1, 1, mask_query, key_len), dtype=types.fp16),
                 mb.StateTensorSpec(self.cache_shape(), dtype=types.fp16),
                 mb.StateTensorSpec(self.cache_shape(), dtype=types.fp16)]

        @mb.program(input_specs=specs, opset_version=ct.target.iOS18)
        def main(inputIds, causalMask, keyCache, valueCache):  # the contract's names
            return self.forward(inputIds, causalMask, keyCache, valueCache)

        return main
