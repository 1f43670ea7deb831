"""The teacher's logits and top-k that learned scales, distillation and e2e QAT share."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gemma3_weights, tiny_model_folder, tiny_tokenizer, write_model_folder

import mlx_slm

pytest.importorskip("mlx.core")

GEMMA3 = {
    "model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32,
    "sliding_window": 4, "sliding_window_pattern": 2, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    "rms_norm_eps": 1e-6, "vocab_size": 263, "max_position_embeddings": 512, "torch_dtype": "float32",
}


def reference_logits(model, tokens: np.ndarray) -> np.ndarray:
    """The MLX model's own forward pass in float32 (its weights widened, nothing else changed)."""
    import mlx.core as mx
    from mlx.utils import tree_map

    model.update(tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a,
                          model.parameters()))
    return np.array(model(mx.array(tokens)).astype(mx.float32))


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_teacher_logits_are_the_models_float32_logits(tmp_path, kind):
    """Llama runs on the numpy engine (as evaluation does on a CPU), Gemma 3 on MLX in float32:
    either way a batch of windows gives the model's own logits."""
    from mlx_slm.distill.teacher import teacher_logits
    from mlx_slm.model_access import choose_engine

    folder = (tiny_model_folder(tmp_path, "llama") if kind == "llama" else
              write_model_folder(tmp_path / "gemma3", GEMMA3, gemma3_weights(GEMMA3), tiny_tokenizer()))
    model, _ = mlx_slm.load(folder, backend="mlx")
    assert choose_engine(model, None) == ("numpy" if kind == "llama" else "mlx")
    tokens = np.random.default_rng(0).integers(0, 263, (3, 12)).astype(np.int32)
    with teacher_logits(model) as logits_of:
        got = logits_of(tokens)
    assert got.dtype == np.float32 and got.shape == (3, 12, 263)
    want = reference_logits(mlx_slm.load(folder, backend="mlx")[0], tokens)
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def test_top_k_logits_are_the_k_largest_in_decreasing_order():
    from mlx_slm.distill.teacher import top_k_logits

    rng = np.random.default_rng(1)
    logits = rng.integers(0, 6, (4, 5, 40)).astype(np.float32)  # many ties
    for k in (1, 7, 40, 100):
        values, indices = top_k_logits(logits, k)
        assert indices.dtype == np.int32 and indices.shape == (4, 5, min(k, 40))
        assert np.array_equal(values, -np.sort(-logits, axis=-1)[..., :k])
        assert np.array_equal(values, np.take_along_axis(logits, indices, -1))
        assert all(len(set(row)) == len(row) for row in indices.reshape(-1, indices.shape[-1]).tolist())
