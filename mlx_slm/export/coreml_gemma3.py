"""The MIL program (iOS 18) of a Gemma 3 text model: the Llama program with Gemma's differences.

Same contract as :mod:`.coreml_llama` (``inputIds``, ``causalMask``, ``keyCache``,
``valueCache`` -> ``logits``). What differs, following mlx-lm's ``gemma3_text``:

- embeddings scaled by sqrt(hidden_size) (rounded to bfloat16, as mlx-lm does);
- RMSNorm multiplies by (1 + weight); q/k norms on every layer; four norms per
  layer (input, post-attention, pre- and post-feed-forward), residual sums clipped
  to the fp16 range in a float16 program (mlx-lm's ``clip_residual``);
- GeGLU MLP (gelu, tanh approximation);
- attention scale query_pre_attn_scalar^-1/2: ``scaled_dot_product_attention``
  divides by sqrt(head_dim), so the q_norm weight is multiplied by
  sqrt(head_dim / query_pre_attn_scalar) (queries pre-scaled at no extra op);
- layer i is global when (i + 1) % sliding_window_pattern == 0 (RoPE base
  rope_theta, with rope_scaling), else sliding (base rope_local_base_freq), whose
  mask also blocks keys ``sliding_window`` or more positions behind the query.
  That band, like causality, is derived inside the program from the positions, so
  runners that send a zero mask get Gemma's attention. The cache keeps every
  position for every layer (no rotating buffer).
"""

from __future__ import annotations

import numpy as np

from ..models.numpy_llama import rope_inverse_frequencies
from .coreml_llama import LlamaProgramBuilder, Step
from .coreml_options import CoreMLOptions
from .coreml_weights import FP16_MAX
from .gemma3 import embedding_scale, is_sliding, local_rope_config


class Gemma3ProgramBuilder(LlamaProgramBuilder):
    """:class:`~.coreml_llama.LlamaProgramBuilder` with Gemma 3's norms, MLP, embedding scale,
    residual clipping and local/global attention layers."""

    def __init__(self, mb, config: dict, weights: dict, weight_var, max_context: int,
                 compute_precision: str = "float16", options: CoreMLOptions | None = None):
        super().__init__(mb, config, weights, weight_var, max_context, compute_precision, options)
        self.window = int(config["sliding_window"])
        self.query_scale = float(np.sqrt(self.head_dim / float(config["query_pre_attn_scalar"])))

    def norm_weight(self, path: str):
        """1 + weight; for q_norm also times sqrt(head_dim / query_pre_attn_scalar)."""
        values = 1.0 + self.weights[f"{path}.weight"].astype(np.float32)
        if path.endswith(".q_norm"):
            values = values * np.float32(self.query_scale)
        return self.vector(f"{path}.weight", values)

    def activation(self, gate):
        return self.mb.gelu(x=gate, mode="TANH_APPROXIMATION")

    def embed(self, input_ids):
        """Embedding rows times sqrt(hidden_size) rounded to bfloat16 (mlx-lm's exact factor)."""
        return self.mb.mul(x=super().embed(input_ids), y=self.np_dtype(embedding_scale(self.config)))

    def window_mask(self, mask, step: Step):
        """The causal mask [1, 1, T, E] (or [T, E]) with keys ``sliding_window`` or more positions behind their
        query set to -inf: query i sits at position P + i, key j at position j."""
        mb = self.mb
        outside = mb.greater_equal(x=mb.sub(x=step.queries, y=step.keys), y=np.int32(self.window))  # [T, E]
        return mb.select(cond=outside, a=self.np_dtype(-np.inf), b=mask)

    def layer_inputs(self, mask, step: Step) -> list:
        """Sliding layers: local RoPE base and the windowed mask; global layers: rope_theta (+ scaling)
        and the causal mask."""
        local_freq = rope_inverse_frequencies(local_rope_config(self.config), self.head_dim)
        local = self.rope_rows("rope_local", local_freq, step)
        global_ = self.rope_rows("rope_global", rope_inverse_frequencies(self.config, self.head_dim), step)
        window_mask = self.window_mask(mask, step)
        return [(local, window_mask) if is_sliding(self.config, layer) else (global_, mask)
                for layer in range(self.num_layers)]

    def residual(self, h, update):
        """h + update; a float16 program clips the sum to ±fp16 max, so overflow saturates, not inf."""
        total = self.mb.add(x=h, y=update)
        if self.dtype == "fp32":
            return total
        return self.mb.clip(x=total, alpha=np.float16(-FP16_MAX), beta=np.float16(FP16_MAX))

    def block(self, layer: int, h, rope, mask, step: Step):
        """h + post_norm(attention(input_norm(h))), then + post_ff_norm(mlp(pre_ff_norm(h)))."""
        prefix = f"model.layers.{layer}"
        attended = self.attention(layer, self.rms_norm(f"{prefix}.input_layernorm", h), rope, mask, step)
        h = self.residual(h, self.rms_norm(f"{prefix}.post_attention_layernorm", attended))
        fed = self.mlp(layer, self.rms_norm(f"{prefix}.pre_feedforward_layernorm", h))
        return self.residual(h, self.rms_norm(f"{prefix}.post_feedforward_layernorm", fed))
