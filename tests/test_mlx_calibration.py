"""Calibration on MLX (mlx_slm.calib.mlx_engine): mlx-lm's own blocks observed one at a time give the
numpy engine's statistics and choices on the Llama family, and run architectures the numpy engine
cannot (Gemma 3: sliding-window layers, q/k norms, four norms per block)."""

import numpy as np
import pytest
from helpers import gemma3_weights, sample_text, tiny_config, tiny_tokenizer, tiny_weights, write_model_folder

import mlx_slm
from mlx_slm.calib.blocks import calibrate_blocks
from mlx_slm.model_access import access, choose_engine
from mlx_slm.quant.graph import block_groups, head_groups

pytestmark = pytest.mark.mlx

# max |MLX - numpy| relative to the largest entry, for mean squares, Gram matrices and hidden states
# after two float32 blocks (measured: at most 1e-6 on these models)
STATISTICS_TOLERANCE = 1e-5
LLAMA_CASES = {  # model type, config overrides (GQA: 4 query heads, 2 key/value heads)
    "llama": ("llama", {}),
    "llama-untied": ("llama", {"tie_word_embeddings": False}),
    "qwen3": ("qwen3", {}),  # q/k norms
}
# both engines quantizing at 3 bits, group 32, on 8 x 64 tokens: |KL_mlx - KL_numpy| / KL_numpy, and for
# imatrix the share of equal packed words (measured on the three models: imatrix KL within 2.5e-4, words
# >= 0.9998 equal). GPTQ is compared at the resolution it has: its error feedback carries one flipped code
# into the next columns and the next blocks, so on one engine alone, Hessians changed by a relative 1e-6
# (random) moved qwen3's KL from 0.124 to between 0.105 and 0.144 (RTN: 0.185); each engine's gptq must
# then beat RTN clearly and the two agree within that spread.
# awq measured within 4.4e-4 on one machine, 1.2e-3 on another (AVX2 without AVX-512: other float32 sums)
KL_TOLERANCE = {"imatrix": 1e-3, "gptq": 0.2, "awq": 3e-3}
GPTQ_KL_VS_RTN = 0.85
IMATRIX_EQUAL_WORDS = 0.999
# Gemma 3 tiny, 3 bits group 32: KL to the float model relative to RTN's (measured: imatrix 0.73, gptq 0.55)
GEMMA3_KL_VS_RTN = {"imatrix": 0.85, "gptq": 0.65, "awq": 0.85}  # awq measured 0.74
GEMMA3 = {  # layers 0, 1 and 3 slide over 8 tokens, layer 2 is global; GQA
    "model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16,
    "sliding_window": 8, "sliding_window_pattern": 3, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    "rms_norm_eps": 1e-6, "vocab_size": 263, "max_position_embeddings": 512, "torch_dtype": "float32",
}


def llama_folder(root, case):
    model_type, overrides = LLAMA_CASES[case]
    config = tiny_config(model_type, **overrides)
    return write_model_folder(root / case, config, tiny_weights(config))


def gemma3_folder(root):
    return write_model_folder(root / "gemma3", GEMMA3, gemma3_weights(GEMMA3), tiny_tokenizer())


def windows(count=6, length=32, seed=0):
    return np.random.default_rng(seed).integers(0, 263, (count, length)).astype(np.int32)


def block_statistics(model, engine_name, tokens):
    """Per block layer (mean squares [K], Gram mean [K, K]), the last hidden states, the head's name
    and inputs, from one block-by-block pass of the chosen engine over ``tokens``."""
    view = access(model)
    engine = view.calibration_engine(engine_name)
    names = [path for path in view.candidate_layers() if path.startswith("model.layers.")]
    stats = {}

    def update(block_names, block_stats):
        stats.update({name: (block_stats.importance(name), block_stats.hessian(name).copy()) for name in block_names})

    h = calibrate_blocks(engine, names, tokens, True, update, "test", batch_size=4, progress=False)
    return stats, np.array(h), engine.head_name, np.array(engine.head_input(h))


def relative_error(got, expected) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_statistics_equal_the_numpy_engines(tmp_path, case):
    model, _ = mlx_slm.load(llama_folder(tmp_path, case), backend="mlx", progress=False)
    before = {name: np.array(value) for name, value in access(model).arrays().items()}
    tokens = windows()
    numpy_stats, numpy_h, numpy_head, numpy_head_x = block_statistics(model, "numpy", tokens)
    mlx_stats, mlx_h, mlx_head, mlx_head_x = block_statistics(model, "mlx", tokens)
    assert numpy_stats.keys() == mlx_stats.keys() and len(mlx_stats) == 14
    for name, (importance, hessian) in numpy_stats.items():
        assert relative_error(mlx_stats[name][0], importance) < STATISTICS_TOLERANCE, name
        assert relative_error(mlx_stats[name][1], hessian) < STATISTICS_TOLERANCE, name
    assert relative_error(mlx_h, numpy_h) < STATISTICS_TOLERANCE
    assert mlx_head == numpy_head == ("lm_head" if case == "llama-untied" else "model.embed_tokens")
    assert relative_error(mlx_head_x, numpy_head_x) < STATISTICS_TOLERANCE
    after = access(model).arrays()
    assert all(np.array_equal(np.array(after[name]), value) for name, value in before.items())  # left as it was


def quantized(folder, method, cpu_engine=None, bits=3):
    model, tokenizer = mlx_slm.load(folder, backend="mlx", progress=False)
    if method == "rtn":
        return mlx_slm.quantize(model, bits=bits, group_size=32, progress=False), tokenizer
    return mlx_slm.quantize(model, method=method, bits=bits, group_size=32, calib=[sample_text(60)],
                            tokenizer=tokenizer, num_samples=8, seq_len=64, cpu_engine=cpu_engine,
                            progress=False), tokenizer


def kl_to(folder, model, tokenizer) -> float:
    reference, _ = mlx_slm.load(folder, backend="mlx", progress=False)
    return mlx_slm.evaluate(model, tokenizer, text=[sample_text(30, seed=1)], reference=reference, seq_len=64,
                            decode_tokens=0, progress=False)["kld"]


@pytest.mark.parametrize("method,case", [(method, case) for method in ("imatrix", "gptq") for case in LLAMA_CASES]
                         + [("awq", "llama-untied"), ("awq", "qwen3")])
def test_methods_choose_alike_on_both_engines(tmp_path, case, method):
    folder = llama_folder(tmp_path, case)
    arrays, kl = {}, {}
    for engine in ("numpy", "mlx"):
        model, tokenizer = quantized(folder, method, engine)
        arrays[engine] = {name: np.array(value) for name, value in access(model).arrays().items()}
        kl[engine] = kl_to(folder, model, tokenizer)
    words = [name for name, value in arrays["numpy"].items() if value.dtype == np.uint32]
    assert len(words) == (16 if case == "llama-untied" else 15)
    assert abs(kl["mlx"] - kl["numpy"]) / kl["numpy"] < KL_TOLERANCE[method], kl
    if method == "gptq":
        rtn = kl_to(folder, *quantized(folder, "rtn"))
        assert max(kl.values()) < GPTQ_KL_VS_RTN * rtn, (kl, rtn)
    if method == "imatrix":
        equal = np.concatenate([(arrays["mlx"][name] == arrays["numpy"][name]).ravel() for name in words])
        assert equal.mean() >= IMATRIX_EQUAL_WORDS


@pytest.mark.parametrize("case", ["llama-untied", "qwen3"])
def test_awq_probe_finds_the_same_groups_on_both_engines(tmp_path, case):
    model, _ = mlx_slm.load(llama_folder(tmp_path, case), backend="mlx", progress=False)
    found = {}
    for engine_name in ("numpy", "mlx"):
        engine = access(model).calibration_engine(engine_name)
        blocks = [group for layer in range(2) for group in block_groups(engine, layer)]
        found[engine_name] = blocks + head_groups(engine)
    assert found["mlx"] == found["numpy"]
    assert len(found["mlx"]) == (7 if case == "llama-untied" else 6)  # norm -> q/k/v, norm -> gate/up, up -> down


def test_gemma3_blocks_one_at_a_time_give_the_models_logits(tmp_path):
    """Windows of 32 tokens past the 8-token sliding window: each block got the mask the model gives
    it (float32 weights: the model's own forward pass is the reference, within float32 rounding)."""
    import mlx.core as mx

    from mlx_slm.calib.mlx_blocks import tail

    model, _ = mlx_slm.load(gemma3_folder(tmp_path), backend="mlx", progress=False)
    tokens = windows(count=3)
    h = calibrate_blocks(access(model).calibration_engine("mlx"), [], tokens, False, None, "test", progress=False)
    got, expected = np.array(tail(model, h)), np.array(model(mx.array(tokens)))
    assert relative_error(got, expected) < STATISTICS_TOLERANCE


def test_gemma3_calibrated_methods_run_on_mlx_and_beat_rtn(tmp_path):
    """The numpy engine cannot run Gemma 3 (sliding-window layers, q/k norms, four norms per block,
    scaled embeddings): its statistics come from mlx-lm's own blocks."""
    folder = gemma3_folder(tmp_path)
    kl = {}
    for method in ("rtn", "imatrix", "gptq", "awq"):
        model, tokenizer = quantized(folder, method)
        kl[method] = kl_to(folder, model, tokenizer)
        if method != "rtn":
            record = mlx_slm.model_config(model)["mlx_slm"]
            assert record["method"] == method and record["calibration_engine"] == "mlx"
            assert model.model.layers[3].mlp.down_proj.bits == 3
    for method, ratio in GEMMA3_KL_VS_RTN.items():
        assert kl[method] < ratio * kl["rtn"], kl
    assert kl["gptq"] < kl["imatrix"], kl


def test_gemma3_awq_scales_only_what_stays_exact(tmp_path):
    """Gemma's norms multiply by 1 + weight (scaling the weight does not scale the output) and its 2
    query heads per key/value head keep v -> o apart: the probe keeps up -> down in every block only."""
    model, _ = mlx_slm.load(gemma3_folder(tmp_path), backend="mlx", progress=False)
    engine = access(model).calibration_engine("mlx")
    groups = [group for layer in range(GEMMA3["num_hidden_layers"]) for group in block_groups(engine, layer)]
    assert [(g.producer, g.consumers) for g in groups] == [
        (f"model.layers.{i}.mlp.up_proj", (f"model.layers.{i}.mlp.down_proj",)) for i in range(4)]
    assert engine.tied and head_groups(engine) == []


def test_gemma3_lut_imatrix_takes_importance_from_mlx(tmp_path):
    """lut's imatrix reads one pass of the float model: on MLX for Gemma 3 (measured KL 0.96 x rtn's)."""
    folder = gemma3_folder(tmp_path)
    kl = {}
    for method in ("rtn", "imatrix"):
        model, tokenizer = mlx_slm.load(folder, backend="mlx", progress=False)
        mlx_slm.quantize(model, method=method, format="lut", bits=3, group_size=8, calib=[sample_text(60)],
                         tokenizer=tokenizer, num_samples=8, seq_len=64, progress=False)
        kl[method] = kl_to(folder, model, tokenizer)
    assert mlx_slm.model_config(model)["mlx_slm"]["calibration_engine"] == "mlx"
    assert kl["imatrix"] < 0.99 * kl["rtn"], kl


def test_gemma3_wanda_and_sparsegpt_prune_on_mlx(tmp_path):
    """Wanda and SparseGPT read their statistics from mlx-lm's blocks for Gemma 3: exact 50% sparsity in
    every decoder linear layer, and both nearer the float model than magnitude pruning (KL asserted)."""
    from mlx_slm.prune import prune

    folder = gemma3_folder(tmp_path)
    kl = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model, tokenizer = mlx_slm.load(folder, backend="mlx", progress=False)
        prune(model, method=method, sparsity=0.5, calib=[sample_text(60)], tokenizer=tokenizer, num_samples=8,
              seq_len=64, progress=False)
        for path, weight in access(model).arrays().items():
            if path.startswith("model.layers.") and path.endswith("proj.weight"):
                assert np.count_nonzero(np.array(weight) == 0) == weight.size // 2, path
        kl[method] = kl_to(folder, model, tokenizer)
        if method != "magnitude":
            assert mlx_slm.model_config(model)["mlx_slm"]["pruning"][-1]["calibration_engine"] == "mlx"
    assert kl["wanda"] < kl["magnitude"] and kl["sparsegpt"] < kl["magnitude"], kl


@pytest.mark.parametrize("model_type,cpu_engine,expected", [
    ("llama", None, "numpy"), ("qwen3", None, "numpy"), ("gemma3_text", None, "mlx"),
    ("llama", "mlx", "mlx"), ("gemma3_text", "mlx", "mlx"),
    ("gemma3_text", "numpy", "mlx"),  # the numpy engine runs the Llama family only
])
def test_default_engine_on_a_cpu(tmp_path, model_type, cpu_engine, expected):
    folder = gemma3_folder(tmp_path) if model_type == "gemma3_text" else llama_folder(tmp_path, model_type)
    model, _ = mlx_slm.load(folder, backend="mlx", progress=False)
    assert choose_engine(model, cpu_engine) == expected

