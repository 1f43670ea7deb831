"""The Core AI program of a Gemma 3 text model: the Llama program with Gemma's differences.

Same contract as :mod:`.coreai_llama` (``input_ids``, ``position_ids``, states ``keyCache`` /
``valueCache`` -> float16 ``logits``). What differs, following mlx-lm's ``gemma3_text``:

- embedding rows scaled by sqrt(hidden_size) rounded to bfloat16 (mlx-lm's factor);
- RMSNorm multiplies by (1 + weight); q/k norms on every layer; four norms per layer (input,
  post-attention, pre- and post-feed-forward); in a float16 program the residual sums are clipped to
  the float16 range (mlx-lm's ``clip_residual``), so an overflow saturates instead of becoming inf;
- GeGLU MLP (gelu, tanh approximation); attention scale query_pre_attn_scalar^-1/2;
- layer i is global when (i + 1) % sliding_window_pattern == 0 (RoPE base rope_theta, with
  rope_scaling, causal over every cached row), else sliding (RoPE base rope_local_base_freq): a query
  sees the keys less than ``sliding_window`` positions behind it, as mlx-lm's rotating cache and
  window mask give, and the layer reads only the cache rows of that window. The cache keeps every
  position of every layer (the contract has one cache of all layers, sized by the caller).
"""

from __future__ import annotations

import numpy as np

from ..models.numpy_llama import rope_inverse_frequencies
from .coreai_llama import LlamaGraph
from .gemma3 import embedding_scale, is_sliding, local_rope_config

FLOAT16_MAX = float(np.finfo(np.float16).max)


class Gemma3Graph(LlamaGraph):
    """:class:`~.coreai_llama.LlamaGraph` with Gemma 3's norms, MLP, embedding scale, residual clipping and
    local/global attention layers; ``config`` is the resolved text-model config (:func:`.gemma3.program_config`)."""

    def __init__(self, ops, config: dict, weights: dict, max_context: int, compute_precision: str):
        super().__init__(ops, config, weights, max_context, compute_precision)
        self.attention_scale = float(config["query_pre_attn_scalar"]) ** -0.5

    def norm_weight(self, path: str) -> np.ndarray:
        return 1.0 + self.weights[f"{path}.weight"].astype(np.float32)

    def activation(self, gate):
        return self.ops.gelu(gate, approximate="tanh")

    def embed(self, input_ids):
        return self.ops.broadcasting_mul(super().embed(input_ids),
                                         np.array([embedding_scale(self.config)], self.dtype))

    def layer_views(self, step) -> list:
        """Sliding layers: local RoPE base and the window; global layers: rope_theta (+ scaling), causal."""
        local = self.view(step, rope_inverse_frequencies(local_rope_config(self.config), self.head_dim),
                          window=int(self.config["sliding_window"]))
        global_ = self.view(step, rope_inverse_frequencies(self.config, self.head_dim))
        return [local if is_sliding(self.config, layer) else global_ for layer in range(self.num_layers)]

    def residual(self, h, update):
        """h + update, clipped to ±float16 max in a float16 program."""
        ops, total = self.ops, self.ops.add(h, update)
        if self.dtype == np.float32:
            return total
        bound = np.array([FLOAT16_MAX], np.float16)
        return ops.broadcasting_maximum(ops.broadcasting_minimum(total, bound), -bound)

    def block(self, layer: int, h, step, view, caches):
        """h + post_norm(attention(input_norm(h))), then + post_ff_norm(mlp(pre_ff_norm(h)))."""
        prefix = f"model.layers.{layer}"
        attended = self.attention(layer, self.rms_norm(f"{prefix}.input_layernorm", h), step, view, caches)
        h = self.residual(h, self.rms_norm(f"{prefix}.post_attention_layernorm", attended))
        fed = self.mlp(layer, self.rms_norm(f"{prefix}.pre_feedforward_layernorm", h))
        return self.residual(h, self.rms_norm(f"{prefix}.post_feedforward_layernorm", fed))
