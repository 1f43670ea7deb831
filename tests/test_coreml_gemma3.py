"""Core ML export of Gemma 3 text models: the saved package, run by the numpy MIL interpreter in coreml/,
computes what mlx-lm's gemma3_text model computes (prefill longer than the sliding window, then decode).

Gemma 3 has no numpy engine, so the reference is the MLX model (float32 weights holding fp16 values)."""

import json

import numpy as np
import pytest
from helpers import gemma3_weights, tiny_model_folder, tiny_tokenizer, write_model_folder

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.model_access import set_model_config

ct = pytest.importorskip("coremltools")
from mlx_slm.coreml.mil_interpreter import (  # noqa: E402  (coremltools)
    MILInterpreter,
    chunked_calls,
    compare_greedy,
    zero_mask,
)

WINDOW = 8
PROMPT = [5, 9, 100, 7, 30, 61, 200, 11, 42, 88, 150, 3, 77]  # 13 tokens > WINDOW
STEPS = 8  # positions up to 21: every sliding layer drops keys during prefill and decode
TEXT_CONFIG = {
    "model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "query_pre_attn_scalar": 24,
    "sliding_window": WINDOW, "sliding_window_pattern": 2, "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0, "rms_norm_eps": 1e-6, "vocab_size": 263, "max_position_embeddings": 512,
    "torch_dtype": "float32",
}
# max |Δlogit| vs the float32 MLX model (tiny logits span about ±5), by weight bits and compute precision;
# measured: float 0.0076 (float16) / 0.0015 (float32: the fp16 KV-cache states are the floor),
# 4-bit g32 0.0072 / 0.0045 (float32: the fp16 rounding of scales and offsets dominates)
EXPECTED = {None: {"float16": 0.02, "float32": 0.003}, 4: {"float16": 0.02, "float32": 0.006}}


def gemma3_model(tmp_path, bits=None, **overrides):
    config = {**TEXT_CONFIG, **overrides}
    folder = write_model_folder(tmp_path / "gemma3", config, gemma3_weights(config), tiny_tokenizer())
    model, tokenizer = mlx_slm.load(folder, backend="mlx")
    if bits is not None:
        mlx_slm.quantize(model, bits=bits, group_size=32, progress=False)
    return model, tokenizer


class MLXSteps:
    """An mlx-lm model as ``compare_greedy`` runs it: ``make_cache()``, ``(ids, cache) -> float32 logits``."""

    def __init__(self, model):
        self.model = model

    def make_cache(self):
        return self.model.make_cache()

    def __call__(self, ids: np.ndarray, cache) -> np.ndarray:
        import mlx.core as mx

        return np.array(self.model(mx.array(ids), cache=cache).astype(mx.float32))


@pytest.mark.mlx
@pytest.mark.parametrize("bits", [None, 4])
def test_gemma3_package_matches_model(bits, tmp_path):
    """Prefill of 13 tokens (window 8) + 8 greedy steps; float16 and float32 compute."""
    model, tokenizer = gemma3_model(tmp_path, bits)
    deltas = {}
    for precision in ("float16", "float32"):
        package = mlx_slm.export_coreml(model, tokenizer, tmp_path / precision / "Gemma.mlpackage", max_context=32,
                                        compute_precision=precision)
        package_tokens, model_tokens, deltas[precision] = compare_greedy(
            MILInterpreter(package), MLXSteps(model), PROMPT, STEPS)
        assert package_tokens == model_tokens
    print(f"\ngemma3 {bits or 'float'}: max |dlogit| float16 {deltas['float16']:.5f}, "
          f"float32 {deltas['float32']:.5f}")
    assert deltas["float16"] < EXPECTED[bits]["float16"]
    assert deltas["float32"] < EXPECTED[bits]["float32"] and deltas["float32"] < deltas["float16"]


@pytest.mark.mlx
def test_gemma3_under_swift_transformers_requests(tmp_path):
    """swift-transformers' requests (zero causalMask [1, 1, 1, S + 1]): the program builds both the causal mask and
    the sliding window itself; prompts of 1 and 13 tokens (window 8), then 8 greedy steps."""
    model, tokenizer = gemma3_model(tmp_path)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Gemma.mlpackage", max_context=32)
    interpreter = MILInterpreter(package)
    for prompt in ([PROMPT[0]], PROMPT):
        package_tokens, model_tokens, delta = compare_greedy(interpreter, MLXSteps(model), prompt, STEPS,
                                                             mask=zero_mask)
        assert package_tokens == model_tokens and delta < EXPECTED[None]["float16"], (len(prompt), delta)


@pytest.mark.mlx
def test_gemma3_enumerated_shapes_keep_the_sliding_window(tmp_path):
    """shapes="enumerated" (query lengths 1 and 4), last-position logits: the 13-token prompt in chunks 4+4+4+1,
    then 8 greedy steps; the sliding layers' window, built over the whole cache, gives the model's logits."""
    from mlx_slm.export import CoreMLOptions

    model, tokenizer = gemma3_model(tmp_path)
    options = CoreMLOptions(shapes="enumerated", query_lengths=(1, 4), logits="last")
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Gemma.mlpackage", max_context=32,
                                    options=options)
    package_tokens, model_tokens, delta = compare_greedy(MILInterpreter(package), MLXSteps(model), PROMPT, STEPS,
                                                         feed=chunked_calls((1, 4)))
    assert package_tokens == model_tokens and delta < EXPECTED[None]["float16"], delta


@pytest.mark.mlx
def test_gemma3_multimodal_config_exports_its_text_model(tmp_path):
    """A "gemma3" config (text_config inside, weights under language_model.) exports its text model: here with
    linear RoPE scaling on the global layers, query_pre_attn_scalar == head_dim, pattern 3 (layer 2 global)."""
    text = {**TEXT_CONFIG, "query_pre_attn_scalar": 16, "sliding_window_pattern": 3,
            "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    config = {"model_type": "gemma3", "vocab_size": text["vocab_size"], "eos_token_id": 2,
              "text_config": {k: v for k, v in text.items() if k != "vocab_size"}}
    folder = write_model_folder(tmp_path / "gemma3-mm", config, gemma3_weights(text, seed=1, prefix="language_model."),
                                tiny_tokenizer())
    model, tokenizer = mlx_slm.load(folder, backend="mlx")
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "GemmaMM.mlpackage", max_context=24)
    package_tokens, model_tokens, delta = compare_greedy(MILInterpreter(package), MLXSteps(model), PROMPT, STEPS)
    assert package_tokens == model_tokens and delta < EXPECTED[None]["float16"]

    spec = ct.utils.load_spec(str(package))
    assert [i.name for i in spec.description.input] == ["inputIds", "causalMask"]
    assert [o.name for o in spec.description.output] == ["logits"]
    for state in spec.description.state:  # layers, KV heads, max_context, head_dim
        assert list(state.type.stateType.arrayType.shape) == [4, 1, 24, 16], state.name
    manifest = json.loads(package.with_suffix(".json").read_text())
    assert manifest["model_type"] == "gemma3" and manifest["max_context"] == 24
    assert {"model.layers.3.mlp.down_proj", "model.embed_tokens"} <= {layer["name"] for layer in manifest["layers"]}


def test_gemma3_needs_the_mlx_model(tmp_path):
    """The numpy backend has no Gemma engine: a model that is not mlx-lm's gets one clear error."""
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, "llama"), backend="numpy")
    set_model_config(model, {**mlx_slm.model_config(model), "model_type": "gemma3_text"})
    with pytest.raises(SLMError, match="exporting gemma3_text needs the MLX backend"):
        mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "G.mlpackage", max_context=16)


def test_unsupported_type_names_the_supported_ones(tmp_path):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, "llama"), backend="numpy")
    set_model_config(model, {**mlx_slm.model_config(model), "model_type": "gemma2"})
    with pytest.raises(SLMError, match=r"supports the Llama family \(llama, mistral, qwen2, qwen3, smollm\) and "
                                       r"Gemma 3 \(gemma3_text, gemma3\), not model type 'gemma2'"):
        mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "G.mlpackage", max_context=16)
