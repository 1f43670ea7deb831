"""Whole-model RTN quantization: identical to mlx_lm.convert, per-layer config, clear refusals."""

import json
import logging

import numpy as np
import pytest
from helpers import tiny_model_folder

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.io import safetensors_np
from mlx_slm.quantize import quantization_plan


def saved_weights(folder):
    return safetensors_np.load(folder / "model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


def mlx_lm_convert(src, dst, bits, group_size):
    from mlx_lm import convert

    convert(hf_path=str(src), mlx_path=str(dst), quantize=True, q_bits=bits, q_group_size=group_size)
    return dst


@pytest.mark.mlx
@pytest.mark.parametrize("bits,group_size", [(2, 32), (3, 64), (4, 64), (5, 128), (6, 32), (8, 64)])
def test_rtn_equals_mlx_lm_convert_on_tiny(tmp_path, bits, group_size):
    folder = tiny_model_folder(tmp_path, "qwen3")
    reference = saved_weights(mlx_lm_convert(folder, tmp_path / "stock", bits, group_size))
    for backend in ("mlx", "numpy"):
        model, tokenizer = mlx_slm.load(folder, backend=backend)
        mlx_slm.quantize(model, bits=bits, group_size=group_size, progress=False)
        out = mlx_slm.save(model, tokenizer, tmp_path / f"ours-{backend}")
        assert_same_weights(saved_weights(out), reference)


@pytest.mark.mlx
def test_quantized_logits_agree_across_backends_and_stock_loader(tmp_path):
    import mlx.core as mx
    from mlx_lm.utils import load as stock_load

    from mlx_slm.runtime import fast_cpu

    folder = tiny_model_folder(tmp_path)
    config = {"by_type": {"embedding": {"bits": 8}}, "by_name": {"model.layers.1.mlp.*": {"bits": 2, "group_size": 32}}}
    model, tokenizer = mlx_slm.load(folder, backend="numpy")
    mlx_slm.quantize(model, bits=3, group_size=64, config=config, progress=False)
    out = mlx_slm.save(model, tokenizer, tmp_path / "q")
    tokens = np.array([[1, 50, 80, 120, 7, 9]])
    stock, _ = stock_load(str(out))
    with fast_cpu(stock):
        stock_logits = np.array(stock(mx.array(tokens))[0].astype(mx.float32))
    np.testing.assert_allclose(model(tokens)[0], stock_logits, rtol=1e-4, atol=1e-4)
    assert stock.model.layers[1].mlp.up_proj.bits == 2 and stock.model.layers[1].mlp.up_proj.group_size == 32
    assert stock.model.embed_tokens.bits == 8 and stock.model.layers[0].mlp.up_proj.bits == 3


def test_config_resolution_order(tmp_path):
    layers = {"model.embed_tokens": (263, 128), "model.layers.0.mlp.down_proj": (128, 192),
              "model.layers.0.self_attn.q_proj": (128, 128), "model.layers.1.self_attn.q_proj": (128, 128)}
    config = {"by_type": {"linear": {"bits": 3}, "q_proj": {"bits": 5}, "embedding": "fp16"},
              "by_name": {"model.layers.1.*": {"bits": 8}}}
    plan, skipped = quantization_plan(layers, 4, 64, config)
    assert plan["model.embed_tokens"] is None and "config" in skipped["model.embed_tokens"]
    assert plan["model.layers.0.mlp.down_proj"] == {"bits": 3, "group_size": 64}
    assert plan["model.layers.0.self_attn.q_proj"] == {"bits": 5, "group_size": 64}
    assert plan["model.layers.1.self_attn.q_proj"] == {"bits": 8, "group_size": 64}


def test_indivisible_layers_are_skipped_and_logged(tmp_path, caplog):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    with caplog.at_level(logging.WARNING, logger="mlx_slm"):
        mlx_slm.quantize(model, bits=4, group_size=128, progress=False)
    assert "model.layers.0.mlp.down_proj" in caplog.text and "not divisible" in caplog.text
    assert model.weights["model.layers.0.mlp.down_proj.weight"].dtype == np.float16
    assert model.weights["model.layers.0.mlp.up_proj.weight"].dtype == np.uint32
    out = mlx_slm.save(model, tokenizer, tmp_path / "q")
    saved = json.loads((out / "config.json").read_text())
    assert "not divisible" in saved["mlx_slm"]["unquantized"]["model.layers.1.mlp.down_proj"]


def test_config_file_and_keep(tmp_path):
    (tmp_path / "q.yaml").write_text("by_name:\n  model.embed_tokens: fp16\n")
    model, _ = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    mlx_slm.quantize(model, bits=4, group_size=64, config=str(tmp_path / "q.yaml"), progress=False)
    assert model.weights["model.embed_tokens.weight"].dtype == np.float16
    assert mlx_slm.model_config(model)["quantization"]["model.embed_tokens"] is False


@pytest.mark.parametrize("kwargs,message", [
    ({"bits": 7}, "supports bits"),
    ({"group_size": 48}, "group sizes"),
    ({"method": "magic"}, "not available"),
    ({"config": {"by_name": {"x": {"bitz": 3}}}}, "must be 'fp16' or a mapping"),
    ({"config": {"colour": 3}}, "unknown quantization config keys"),
    ({"config": "/no/such/file.yaml"}, "no such quantization config"),
])
def test_bad_settings_are_clear(tmp_path, kwargs, message):
    model, _ = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    with pytest.raises(SLMError, match=message):
        mlx_slm.quantize(model, progress=False, **kwargs)


def test_quantizing_twice_is_refused(tmp_path):
    model, _ = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    mlx_slm.quantize(model, progress=False)
    with pytest.raises(SLMError, match="already quantized"):
        mlx_slm.quantize(model, progress=False)
