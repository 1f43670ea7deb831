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


def test_a_streamed_safetensors_file_reads_back_in_the_safetensors_package(tmp_path):
    """save_stream writes the header from the layout, then each tensor as it arrives; the `safetensors`
    package reads every dtype it has back exactly. Tensors out of order, unlike their layout or missing
    fail."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    values = {"f16": rng.standard_normal((3, 5)).astype(np.float16), "f32": rng.standard_normal(7).astype(np.float32),
              "i32": np.arange(-6, 6, dtype=np.int32).reshape(3, 4), "scalar": np.array(2.5, np.float32),
              "u8": np.arange(9, dtype=np.uint8), "t": np.asfortranarray(rng.standard_normal((4, 3))).T}
    layout = {name: (value.dtype, value.shape) for name, value in values.items()}
    safetensors_np.save_stream(tmp_path / "x.safetensors", layout, ((n, values[n]) for n in sorted(values)),
                               metadata={"format": "mlx"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == values.keys()
    for name, value in values.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
    with pytest.raises(ValueError, match="out of order"):
        safetensors_np.save_stream(tmp_path / "y.safetensors", layout, ((n, values[n]) for n in values))
    with pytest.raises(ValueError, match="unlike its layout"):
        safetensors_np.save_stream(tmp_path / "y.safetensors", layout, [("f16", values["f16"].T)])
    with pytest.raises(ValueError, match="fewer tensors"):
        safetensors_np.save_stream(tmp_path / "y.safetensors", layout, [("f16", values["f16"])])


@pytest.mark.mlx
def test_saving_with_release_writes_a_lazy_model_bit_for_bit_and_leaves_no_array_in_it(tmp_path):
    """``release=True`` (how ``convert`` writes): each array leaves the model once written, and the file
    holds the input's tensors bit for bit, bfloat16 included (mx.load is the reference reader)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    folder = tiny_model_folder(tmp_path, torch_dtype="bfloat16")
    source = mx.load(str(folder / "model.safetensors"))
    for name in source:
        source[name] = source[name].astype(mx.bfloat16)
    mx.save_safetensors(str(folder / "model.safetensors"), source, metadata={"format": "mlx"})
    model, tokenizer = mlx_slm.load(folder, lazy=True)
    mlx_slm.save(model, tokenizer, tmp_path / "out", release=True)
    assert all(value.size == 0 for _, value in tree_flatten(model.parameters()))
    written = mx.load(str(tmp_path / "out" / "model.safetensors"))
    assert written.keys() == source.keys()
    for name, value in source.items():
        assert written[name].dtype == mx.bfloat16
        assert mx.array_equal(written[name].view(mx.uint16), value.view(mx.uint16)).item(), name
    again, _ = mlx_slm.load(tmp_path / "out")
    np.testing.assert_array_equal(mlx_logits(again), mlx_logits(mlx_slm.load(folder)[0]))


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


def test_spilling_into_a_full_folder_fails_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A temporary folder without room (ENOSPC while writing) gives one SLMError naming the folder, the
    size and TMPDIR, and no file is left behind; with room, the arrays come back exactly."""
    import errno
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.uint32)}
    back = safetensors_np.spill(tensors)
    assert back.keys() == tensors.keys() and all(np.array_equal(back[k], tensors[k]) for k in tensors)
    assert list(tmp_path.iterdir()) == []  # unlinked at once, readable through the mapping

    def full(path, arrays, metadata=None):
        with open(path, "wb") as f:
            f.write(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors_np, "save", full)
    with pytest.raises(SLMError, match=rf"cannot keep 0 MB of intermediate results in {tmp_path} \(No space left "
                                       r"on device\); set TMPDIR") as caught:
        safetensors_np.spill(tensors)
    assert "\n" not in str(caught.value) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["quantize", "--bits", "4", "--method", "gptq"],
                                  ["prune", "--method", "sparsegpt", "--sparsity", "0.5"]])
def test_a_temporary_folder_too_small_fails_before_the_work(tmp_path, monkeypatch, capsys, argv):
    """A calibrated quantize or prune keeps each finished block on disk until the save: with less free
    space in the temporary folder than that, it fails at once with one line (exit 2), before any
    calibration pass, and writes no output."""
    import collections
    import shutil

    from helpers import sample_text

    from mlx_slm.cli import main
    from mlx_slm.quant import sequential

    (tmp_path / "calib.txt").write_text(sample_text(40))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(sequential, "calibrate_blocks", lambda *a, **k: pytest.fail("calibrated anyway"))
    command, options = argv[0], argv[1:]
    code = main([command, str(tiny_model_folder(tmp_path)), "-o", str(tmp_path / "out"), "--calib",
                 str(tmp_path / "calib.txt"), "--num-samples", "4", "--seq-len", "32", *options])
    said = [line for line in capsys.readouterr().err.splitlines() if "transformers" not in line]
    assert code == 2 and not (tmp_path / "out").exists()
    assert len(said) == 1 and said[0].endswith("0 MB free; set TMPDIR to a folder with more room"), said
