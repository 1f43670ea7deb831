"""Core AI export of Gemma 3 text models: the saved .aimodel, compiled and run by Apple's Core AI runtime
(coreai-core's CPU runtime), computes what mlx-lm's gemma3_text model computes, with a sliding window of 4
tokens that the prompt and the decode steps outrun.

Gemma 3 has no numpy engine, so the reference is the MLX model computing in float32 (compare_greedy).
"""

import asyncio
import json

import numpy as np
import pytest
from helpers import gemma3_weights, tiny_model_folder, tiny_tokenizer, write_model_folder
from test_coreai_export import FLOAT16_TOLERANCE, TINY_TOLERANCE

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.export.coreai import MLXSteps, compare_greedy, open_package
from mlx_slm.model_access import set_model_config

pytest.importorskip("coreai.authoring", reason="coreai-core is not installed (pip install 'mlx-slm[coreai]')")
pytestmark = pytest.mark.mlx

WINDOW = 4
PROMPT = [5, 9, 100, 7, 30, 61, 200, 11, 42, 88, 150, 3]  # 12 tokens, 3 windows
STEPS = 8  # positions up to 19
CONFIG = {  # layers 0, 1 and 3 slide, layer 2 is global; GQA with 2 query heads per KV head
    "model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 24,
    "sliding_window": WINDOW, "sliding_window_pattern": 3, "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0, "rms_norm_eps": 1e-6, "vocab_size": 263, "max_position_embeddings": 512,
    "torch_dtype": "float32",
}
CASES = {  # quantize options, the layers' format in the manifest
    "float": (None, "float"),
    "q4g32": ({"bits": 4, "group_size": 32}, "affine"),
    "lut4-row-scales": ({"bits": 4, "format": "lut", "group_size": 4}, "lut"),
    "ternary": ({"bits": 2, "format": "ternary", "group_size": 0}, "ternary"),
}


def gemma3_folder(tmp_path, config=CONFIG, prefix="", name="gemma3"):
    """A tiny gemma3_text folder whose logits stay within ±4 (the final norm scaled by 0.7), where
    TINY_TOLERANCE is half a float16 ulp."""
    text = config.get("text_config", config) | {"vocab_size": config["vocab_size"]}
    weights = gemma3_weights(text, prefix=prefix)
    norm = f"{prefix}model.norm.weight"
    weights[norm] = (0.7 * (1 + weights[norm]) - 1).astype(np.float16).astype(np.float32)
    return write_model_folder(tmp_path / name, config, weights, tiny_tokenizer())


def gemma3_model(tmp_path, options=None):
    model, tokenizer = mlx_slm.load(gemma3_folder(tmp_path), backend="mlx")
    if options:
        mlx_slm.quantize(model, progress=False, **options)
    return model, tokenizer


@pytest.mark.parametrize("case", list(CASES))
def test_gemma3_package_matches_model(case, tmp_path):
    """Prefill of 12 tokens + 8 greedy steps (float32 compute); the manifest lists the model's layers."""
    options, layer_format = CASES[case]
    model, tokenizer = gemma3_model(tmp_path, options)
    package = mlx_slm.export_coreai(model, tokenizer, tmp_path / "out" / "Gemma.aimodel", max_context=32,
                                    compute_precision="float32")
    result = compare_greedy(package, model, PROMPT, STEPS)
    print(f"\ngemma3 {case}: max |dlogit| {result['max_dlogit']:.5f}")
    assert result["package_tokens"] == result["model_tokens"]
    assert result["max_dlogit"] < TINY_TOLERANCE
    layers = {layer["name"]: layer for layer in json.loads(package.with_suffix(".json").read_text())["layers"]}
    assert len(layers) == 1 + 7 * CONFIG["num_hidden_layers"]  # embedding (tied head) + 7 matrices per layer
    assert layers["model.layers.3.mlp.down_proj"]["format"] == layer_format


def test_gemma3_matches_stock_mlx_lm_and_chunked_prefill(tmp_path):
    """Against stock ``mlx_lm.load`` of the same folder; a prompt fed in 4 chunks (position_ids 0 .. P+T-1,
    chunks that start inside and beyond the first window) gives the logits of one call; and the window
    matters: without it (the same weights, sliding_window 64) the logits after the first window differ."""
    import mlx_lm

    folder = gemma3_folder(tmp_path)
    model, tokenizer = mlx_slm.load(folder, backend="mlx")
    package = mlx_slm.export_coreai(model, tokenizer, tmp_path / "out" / "Gemma.aimodel", max_context=32,
                                    compute_precision="float32")
    stock, _ = mlx_lm.load(str(folder))
    result = compare_greedy(package, stock, PROMPT, STEPS)
    assert result["package_tokens"] == result["model_tokens"] and result["max_dlogit"] < TINY_TOLERANCE

    async def run():
        async with open_package(package) as whole, open_package(package, max_context=16) as chunked:
            one = await whole(PROMPT)
            parts = [await chunked(PROMPT[start:stop]) for start, stop in ((0, 3), (3, 5), (5, 6), (6, 12))]
            return one, np.concatenate(parts, axis=1)

    one, chunks = asyncio.run(run())
    assert np.abs(one - chunks).max() < 1e-3
    reference = MLXSteps(stock)(np.array([PROMPT], np.int32), None)
    assert np.abs(one - reference).max() < TINY_TOLERANCE
    unwindowed, _ = mlx_lm.load(str(gemma3_folder(tmp_path, {**CONFIG, "sliding_window": 64}, name="wide")))
    change = np.abs(one - MLXSteps(unwindowed)(np.array([PROMPT], np.int32), None)).max(axis=-1)[0]
    assert change[:WINDOW].max() < TINY_TOLERANCE and change[WINDOW:].min() > 0.1


def test_gemma3_float16_compute(tmp_path):
    model, tokenizer = gemma3_model(tmp_path, CASES["q4g32"][0])
    package = mlx_slm.export_coreai(model, tokenizer, tmp_path / "out" / "Half.aimodel", max_context=32)
    result = compare_greedy(package, model, PROMPT, STEPS)
    print(f"\ngemma3 q4g32 float16 compute: max |dlogit| {result['max_dlogit']:.4f}")
    assert result["package_tokens"] == result["model_tokens"]
    assert result["max_dlogit"] < FLOAT16_TOLERANCE


def test_gemma3_multimodal_config_exports_its_text_model(tmp_path):
    """A "gemma3" config (text_config inside, weights under language_model.): its text model, here with linear
    RoPE scaling on the global layer and query_pre_attn_scalar == head_dim; from the CLI."""
    from mlx_slm.cli import main

    text = {**CONFIG, "query_pre_attn_scalar": 16, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    config = {"model_type": "gemma3", "vocab_size": text["vocab_size"], "eos_token_id": 2,
              "text_config": {k: v for k, v in text.items() if k != "vocab_size"}}
    folder = gemma3_folder(tmp_path, config, prefix="language_model.")
    out = tmp_path / "out" / "GemmaMM.aimodel"
    assert main(["export", "coreai", str(folder), "-o", str(out), "--max-context", "24", "--backend", "mlx",
                 "--compute-precision", "float32"]) == 0
    model, _ = mlx_slm.load(folder, backend="mlx")
    result = compare_greedy(out, model, PROMPT, STEPS)
    assert result["package_tokens"] == result["model_tokens"] and result["max_dlogit"] < TINY_TOLERANCE
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["model_type"] == "gemma3" and manifest["max_context"] == 24


def test_gemma3_needs_the_mlx_model(tmp_path):
    """The numpy backend has no Gemma engine: a model that is not mlx-lm's gets one clear error."""
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, "llama"), backend="numpy")
    set_model_config(model, {**mlx_slm.model_config(model), "model_type": "gemma3_text"})
    with pytest.raises(SLMError, match="exporting gemma3_text needs the MLX backend"):
        mlx_slm.export_coreai(model, tokenizer, tmp_path / "out" / "G.aimodel", max_context=16)
