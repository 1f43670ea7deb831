"""load / save across backends: logits agree, stock mlx_lm reads what we write, bad input is clear."""

import json

import numpy as np
import pytest
from helpers import tiny_model_folder

import mlx_slm
from mlx_slm import saving
from mlx_slm.errors import SLMError
from mlx_slm.io import safetensors_np

TOKENS = np.array([3, 77, 120, 9, 200, 15, 64, 31, 250, 7], dtype=np.int32)


def mlx_logits(model, tokens=TOKENS):
    import mlx.core as mx

    from mlx_slm.runtime import fast_cpu

    with fast_cpu(model):
        return np.array(model(mx.array(tokens)[None])[0].astype(mx.float32))


@pytest.mark.mlx
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_numpy_forward_matches_mlx(tmp_path, model_type):
    folder = tiny_model_folder(tmp_path, model_type)
    model_np, _ = mlx_slm.load(folder, backend="numpy")
    model_mx, _ = mlx_slm.load(folder, backend="mlx")
    np.testing.assert_allclose(model_np(TOKENS[None])[0], mlx_logits(model_mx), rtol=1e-4, atol=1e-4)


def test_numpy_decode_with_cache_matches_full_forward(tmp_path):
    model, _ = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    full = model(TOKENS[None])[0]
    cache = model.make_cache()
    first = model(TOKENS[None, :6], cache=cache)[0]
    rest = [model(TOKENS[None, i : i + 1], cache=cache)[0, 0] for i in range(6, len(TOKENS))]
    np.testing.assert_allclose(np.vstack([first, *rest]), full, rtol=1e-5, atol=1e-5)


@pytest.mark.mlx
@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_saved_folder_loads_in_stock_mlx_lm(tmp_path, backend):
    from mlx_lm.utils import load as stock_load

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, "qwen3"), backend=backend)
    expected = model(TOKENS[None])[0] if backend == "numpy" else mlx_logits(model)
    out = mlx_slm.save(model, tokenizer, tmp_path / "saved")
    stock_model, stock_tokenizer = stock_load(str(out))
    np.testing.assert_allclose(mlx_logits(stock_model), expected, rtol=1e-4, atol=1e-4)
    assert stock_tokenizer.encode("the fox") == tokenizer.encode("the fox")


def test_numpy_save_load_round_trip_is_exact(tmp_path):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    mlx_slm.save(model, tokenizer, tmp_path / "again")
    again, _ = mlx_slm.load(tmp_path / "again", backend="numpy")
    assert again.weights.keys() == model.weights.keys()
    for name, value in model.weights.items():
        assert np.array_equal(again.weights[name], value) and again.weights[name].dtype == value.dtype
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == "llama"


def test_bfloat16_safetensors_round_trip(tmp_path):
    from mlx_slm.formats.dtypes import bfloat16

    values = {"a": np.array([1.5, -2.25, 3e-3], dtype=bfloat16), "b": np.arange(6, dtype=np.uint32).reshape(2, 3)}
    safetensors_np.save(tmp_path / "x.safetensors", values)
    back = safetensors_np.load(tmp_path / "x.safetensors")
    assert back["a"].dtype == bfloat16 and np.array_equal(back["a"], values["a"])
    assert np.array_equal(back["b"], values["b"])


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(saving, "write_weights", fail)
    with pytest.raises(KeyboardInterrupt):
        mlx_slm.save(model, tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_save_refuses_to_clobber_unless_asked(tmp_path):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SLMError, match="already exists"):
        mlx_slm.save(model, tokenizer, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(SLMError, match="did not write"):
        mlx_slm.save(model, tokenizer, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    (tmp_path / "out" / "keep.txt").unlink()
    mlx_slm.save(model, tokenizer, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("backend", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
def test_missing_path(tmp_path, backend):
    with pytest.raises(SLMError, match="no model at"):
        mlx_slm.load(tmp_path / "nowhere", backend=backend)


def test_hub_download_failure_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SLMError, match="Hugging Face Hub failed"):
        mlx_slm.load("no-such-org/no-such-model", backend="numpy")


def test_folder_without_config(tmp_path):
    with pytest.raises(SLMError, match="no config.json"):
        mlx_slm.load(tmp_path, backend="numpy")


@pytest.mark.parametrize("backend", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
def test_unsupported_architecture(tmp_path, backend):
    folder = tiny_model_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no_such_architecture"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SLMError, match="no_such_architecture"):
        mlx_slm.load(folder, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
def test_truncated_safetensors(tmp_path, backend):
    folder = tiny_model_folder(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SLMError, match="truncated"):
        mlx_slm.load(folder, backend=backend)


def test_a_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SLMError, match="not a .gguf"):
        mlx_slm.load(tmp_path / "weights.bin", backend="numpy")


@pytest.mark.mlx
def test_a_bfloat16_tensor_goes_to_mlx_as_its_bits_without_a_float32_copy():
    """mlx_array keeps every bfloat16 bit pattern (NaN payloads and signed zeros too) and holds no float32
    copy until evaluated: a model whose every layer is rewritten (pruning) held one per layer before."""
    import gc

    import ml_dtypes
    import mlx.core as mx

    from mlx_slm.formats.dtypes import mlx_array

    bits = np.arange(1 << 16, dtype=np.uint16)  # every bfloat16 pattern
    values = bits.view(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.array(mlx_array(values).view(mx.uint16)), bits)
    large = np.ones((1024, 4096), ml_dtypes.bfloat16)  # 8 MiB
    gc.collect()
    before = mx.get_active_memory()
    held = mlx_array(large)
    assert mx.get_active_memory() - before <= large.nbytes + (1 << 16)
    assert held.dtype == mx.bfloat16 and float(held.astype(mx.float32).sum()) == large.size
