"""AWQ: scaling groups found by a numeric probe, exact rescaling, and lower error than imatrix."""

import json

import numpy as np
import pytest
from helpers import output_error, sample_text, tiny_config, tiny_model_folder, tiny_weights, write_model_folder

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.formats import affine
from mlx_slm.formats.affine import dequantize_codes
from mlx_slm.io import safetensors_np
from mlx_slm.models.numpy_llama import NumpyLlama
from mlx_slm.quant.awq import ScaleWriter, candidate_scales, search_rows, search_scales
from mlx_slm.quant.graph import ScalingGroup, block_groups, head_groups, model_groups
from mlx_slm.quant.imatrix import weighted_quantize

QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def engine_for(model_type="llama", dtype=np.float16, **overrides) -> NumpyLlama:
    config = tiny_config(model_type, **overrides)
    return NumpyLlama(config, tiny_weights(config, 0, dtype))


def expected_block(layer: int, v_to_o: bool) -> list:
    p = f"model.layers.{layer}"
    groups = [ScalingGroup(f"{p}.input_layernorm", "norm", tuple(f"{p}.{n}" for n in QKV)),
              ScalingGroup(f"{p}.post_attention_layernorm", "norm", (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj")),
              ScalingGroup(f"{p}.mlp.up_proj", "linear", (f"{p}.mlp.down_proj",))]
    return groups + [ScalingGroup(f"{p}.self_attn.v_proj", "linear", (f"{p}.self_attn.o_proj",))] * v_to_o


@pytest.mark.parametrize("model_type,overrides,v_to_o", [
    ("llama", {"num_key_value_heads": 4}, True),  # MHA: v's 128 outputs are o's 128 inputs
    ("llama", {}, False),  # GQA: v has 64 outputs, o 128 inputs
    ("qwen3", {}, False),  # q_norm / k_norm feed no linear layer
    ("qwen2", {"num_key_value_heads": 4}, True),  # v's bias is scaled with its rows
])
def test_discovered_block_groups(model_type, overrides, v_to_o):
    engine = engine_for(model_type, **overrides)
    assert model_groups(engine) == expected_block(0, v_to_o) + expected_block(1, v_to_o)


def test_head_group_only_when_the_head_is_untied():
    assert head_groups(engine_for(tie_word_embeddings=True)) == []
    untied = engine_for(tie_word_embeddings=False)
    assert head_groups(untied) == [ScalingGroup("model.norm", "norm", ("lm_head",))]
    assert model_groups(untied)[-1] == ScalingGroup("model.norm", "norm", ("lm_head",))


def test_discovery_restores_every_weight():
    engine = engine_for("qwen2", num_key_value_heads=4)
    weights = dict(engine.weights)
    tokens = np.array([[1, 50, 80, 120, 7]])
    before = engine(tokens)
    block_groups(engine, 0)
    assert all(engine.weights[k] is v for k, v in weights.items())
    np.testing.assert_array_equal(engine(tokens), before)


def outlier_inputs(k: int, tokens: int = 2048, seed: int = 1) -> np.ndarray:
    """Activations [tokens, k] with uneven column scales and 4 columns 30 times louder."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, k)) * np.exp(0.3 * rng.standard_normal(k))
    x[:, rng.choice(k, 4, replace=False)] *= 30
    return x.astype(np.float32)



@pytest.mark.parametrize("bits", [3, 4])
def test_awq_error_is_below_rtn_and_imatrix_with_loud_channels(bits):
    x = outlier_inputs(256)
    hessian = x.T.astype(np.float64) @ x / len(x)
    importance = np.diag(hessian)
    w = (np.random.default_rng(11).standard_normal((128, 256)) / 16).astype(np.float16)
    rtn = output_error(w, affine.unpack(*affine.pack(w, bits, 64), bits, 64, dtype=np.float32), hessian)
    q, scales, biases = weighted_quantize(w, importance, bits, 64)
    imatrix = output_error(w, dequantize_codes(q, scales, biases, 64, np.float32), hessian)
    s, alpha, errors = search_scales([(w, {"bits": bits, "group_size": 64}, np.float16)], importance, hessian, 20)
    assert errors[0] == pytest.approx(imatrix, rel=1e-5)  # alpha 0: no scaling, plain imatrix
    assert 0 < alpha < 1 and errors.min() == pytest.approx(output_error(
        w, dequantize_codes(*weighted_quantize(w * s, importance / s.astype(np.float64) ** 2, bits, 64, np.float16),
                            64, np.float32) / s, hessian), rel=1e-4)
    # measured: 3 bits 7.26 vs imatrix 11.83, rtn 79.6; 4 bits 1.56 vs 2.41, 15.9
    assert errors.min() < 0.7 * imatrix and errors.min() < 0.12 * rtn, (errors.min(), imatrix, rtn)


def test_candidate_scales_are_balanced_and_one_at_alpha_zero():
    importance = np.array([0.0, 1e-12, 1.0, 4.0, 100.0])
    np.testing.assert_array_equal(candidate_scales(importance, 0.0), np.ones(5, np.float32))
    s = candidate_scales(importance, 1.0)
    assert s.max() * s.min() == pytest.approx(1.0, rel=1e-6)
    assert s.max() / s.min() == pytest.approx(1e4, rel=1e-5)  # quiet columns floored at 1e-4 of the loudest
    np.testing.assert_allclose(s[2:] / s[2], [1, 2, 10], rtol=1e-6)


def test_rescaling_alone_keeps_the_float_model_function():
    """Every discovered group (norms, v -> o with bias, up -> down, final norm -> lm_head) rescaled by
    random scales over a 16-fold range, nothing quantized: the logits do not move."""
    engine = engine_for("qwen2", np.float32, num_key_value_heads=4, tie_word_embeddings=False)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 263, (2, 24))
    before = engine(tokens)
    groups = model_groups(engine)
    assert len(groups) == 9
    writer = ScaleWriter(engine, planned=())
    for group in groups:
        s = np.exp2(rng.uniform(-2, 2, engine.dense(group.consumers[0]).shape[1])).astype(np.float32)
        writer.consumers(group, writer.producer(group, s))
    assert {f"model.layers.0.{n}" for n in ("input_layernorm.weight", "self_attn.v_proj.bias")} < set(writer.updates)
    after = engine(tokens)
    assert not np.array_equal(after, before)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def quantize_awq(folder, backend, **kwargs):
    model, tokenizer = mlx_slm.load(folder, backend=backend)
    mlx_slm.quantize(model, bits=kwargs.pop("bits", 4), group_size=64, method="awq", calib=[sample_text(40)],
                     tokenizer=tokenizer, num_samples=6, seq_len=64, progress=False, **kwargs)
    return model, tokenizer


def test_awq_beats_rtn_and_imatrix_on_a_tiny_model(tmp_path):
    folder = tiny_model_folder(tmp_path, num_key_value_heads=4, tie_word_embeddings=False)
    reference, tokenizer = mlx_slm.load(folder, backend="numpy")
    kl = {}
    for method in ("rtn", "imatrix", "awq"):
        model, _ = mlx_slm.load(folder, backend="numpy")
        mlx_slm.quantize(model, bits=3, group_size=64, method=method, calib=[sample_text(40)], tokenizer=tokenizer,
                         num_samples=6, seq_len=64, progress=False)
        kl[method] = mlx_slm.evaluate(model, tokenizer, text=[sample_text(20, seed=7)], reference=reference,
                                      seq_len=64, decode_tokens=0, progress=False)["kld"]
    record = model.config["mlx_slm"]["awq"]
    assert record["grid"] == 20 and record["quantizer"] == "imatrix" and record["groups"] == 9
    # measured: rtn 0.206, imatrix 0.183, awq 0.175
    assert kl["awq"] < 0.97 * kl["imatrix"] < kl["rtn"], kl


def test_awq_with_gptq_quantizer_records_both(tmp_path):
    model, _ = quantize_awq(tiny_model_folder(tmp_path), "numpy", bits=3,
                            awq_options={"quantizer": "gptq", "grid": 5}, gptq_options={"damp": 0.05})
    record = model.config["mlx_slm"]
    assert record["awq"]["quantizer"] == "gptq" and record["awq"]["grid"] == 5 and record["awq"]["groups"] == 6
    assert record["gptq"]["damp"] == 0.05 and record["gptq"]["act_order"] is True


@pytest.mark.mlx
def test_awq_same_on_both_backends_and_stock_mlx_lm_runs_it(tmp_path):
    import mlx.core as mx
    from mlx_lm.utils import load as stock_load

    from mlx_slm.runtime import fast_cpu

    folder = tiny_model_folder(tmp_path, num_key_value_heads=4, tie_word_embeddings=False)
    original = safetensors_np.load(folder / "model.safetensors")
    outputs = {}
    for backend in ("numpy", "mlx"):
        model, tokenizer = quantize_awq(folder, backend)
        outputs[backend] = mlx_slm.save(model, tokenizer, tmp_path / backend)
    a, b = (safetensors_np.load(outputs[k] / "model.safetensors") for k in ("numpy", "mlx"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    norms = [k for k in original if k.endswith("norm.weight")]
    changed = [k for k in norms if not np.array_equal(a[k], original[k])]
    assert len(changed) >= 4 and all(a[k].dtype == np.float16 for k in norms), changed
    assert not np.array_equal(a["model.layers.0.self_attn.o_proj.scales"],
                              affine.pack(original["model.layers.0.self_attn.o_proj.weight"], 4, 64)[1])
    saved = json.loads((outputs["mlx"] / "config.json").read_text())["mlx_slm"]
    assert saved["method"] == "awq" and saved["awq"]["groups"] == 9
    tokens = np.array([[1, 50, 80, 120, 7, 9]])
    ours, _ = mlx_slm.load(outputs["mlx"], backend="mlx")
    numpy_model, _ = mlx_slm.load(outputs["mlx"], backend="numpy")
    stock, _ = stock_load(str(outputs["mlx"]))
    with fast_cpu(stock):
        stock_logits = np.array(stock(mx.array(tokens))[0].astype(mx.float32))
    with fast_cpu(ours):
        our_logits = np.array(ours(mx.array(tokens))[0].astype(mx.float32))
    np.testing.assert_allclose(numpy_model(tokens)[0], stock_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(our_logits, stock_logits, rtol=1e-4, atol=1e-4)


def test_awq_keeps_float_layers_consistent(tmp_path):
    """A consumer kept in float by the config (k) gets its columns scaled with q and v and saved as float16."""
    folder = tiny_model_folder(tmp_path)
    reference, _ = mlx_slm.load(folder, backend="numpy")
    model, tokenizer = quantize_awq(folder, "numpy", bits=8,
                                    config={"by_name": {"model.layers.*.self_attn.k_proj": "fp16"}})
    reloaded, _ = mlx_slm.load(mlx_slm.save(model, tokenizer, tmp_path / "q"), backend="numpy")
    k_proj = reloaded.weights["model.layers.0.self_attn.k_proj.weight"]
    assert k_proj.dtype == np.float16
    assert not np.array_equal(k_proj, reference.weights["model.layers.0.self_attn.k_proj.weight"])
    tokens = np.array([[1, 50, 80, 120, 7, 9]])
    np.testing.assert_array_equal(reloaded(tokens), model(tokens))
    expected = reference(tokens)
    # 8 bits: the rescaled model is within quantization noise of the float one
    assert np.abs(reloaded(tokens) - expected).max() < 0.02 * np.abs(expected).max()


@pytest.mark.parametrize("kwargs,message", [
    ({"format": "lut"}, "'awq' supports the affine format only"),
    ({"awq_options": {"alpha": 0.5}}, r"unknown awq options \['alpha'\]"),
    ({"awq_options": {"grid": 1}}, "grid must be an integer >= 2"),
    ({"awq_options": {"quantizer": "rtn"}}, "quantizer must be one of"),
    ({"calib": None}, "calibration text is missing"),
])
def test_awq_errors_are_clear(tmp_path, kwargs, message):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    settings = {"calib": [sample_text(10)], "tokenizer": tokenizer, "num_samples": 2, "seq_len": 64, **kwargs}
    with pytest.raises(SLMError, match=message):
        mlx_slm.quantize(model, method="awq", progress=False, **settings)


def test_sequential_quantize_refuses_awq():
    from mlx_slm.quant.sequential import sequential_quantize

    with pytest.raises(SLMError, match="use sequential_choose"):
        sequential_quantize(engine_for(), {}, np.zeros((1, 4), int), "awq", {})


def test_cli_awq(tmp_path, tiny_text):
    from mlx_slm.cli import main

    folder = tiny_model_folder(tmp_path)
    assert main(["quantize", str(folder), "-o", str(tmp_path / "q"), "--method", "awq", "--bits", "3",
                 "--calib", str(tiny_text), "--num-samples", "4", "--seq-len", "64", "--backend", "numpy"]) == 0
    record = json.loads((tmp_path / "q" / "config.json").read_text())["mlx_slm"]
    assert record["method"] == "awq" and record["awq"]["groups"] == 6


def write_bfloat16_qwen3(tmp_path):
    from mlx_slm.formats.dtypes import bfloat16

    config = tiny_config("qwen3", vocab_size=272, torch_dtype="bfloat16", num_key_value_heads=4)
    return write_model_folder(tmp_path / "bf16", config, tiny_weights(config, 0, bfloat16))


@pytest.mark.mlx
def test_bfloat16_norms_stay_bfloat16_on_both_backends(tmp_path):
    folder = write_bfloat16_qwen3(tmp_path)
    outputs = {backend: mlx_slm.save(*quantize_awq(folder, backend), tmp_path / backend)
               for backend in ("numpy", "mlx")}
    a, b = (safetensors_np.load(outputs[k] / "model.safetensors") for k in ("numpy", "mlx"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["model.layers.0.input_layernorm.weight"].dtype.name == "bfloat16"


@pytest.mark.parametrize(("shape", "rows"), [
    ((576, 576), 576), ((1536, 576), 1536), ((576, 1536), 576), ((49152, 576), 4096),  # SmolLM2: as before
    ((8192, 2048), 2048), ((2048, 8192), 512), ((49152, 2048), 2048), ((4096, 14336), 292)])  # 1.7B, 8B
def test_the_alpha_search_sees_a_bounded_number_of_evenly_spaced_rows(shape, rows):
    n, k = shape
    row_ids = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], shape)  # no n x k memory
    picked = search_rows(row_ids)[:, 0]
    assert len(picked) == rows
    if rows < n:
        assert picked[0] == 0 and picked[-1] == n - 1 and np.all(np.diff(picked) > 0)
        assert np.ptp(np.diff(picked)) <= 1  # evenly spaced
