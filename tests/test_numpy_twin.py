"""The numpy twin of an MLX model converts weights layer by layer, so calibrating a large
model holds one decoder block in float32 rather than a float32 copy of the whole model."""

import numpy as np
import pytest
from helpers import tiny_config, tiny_model_folder, tiny_weights, write_model_folder

import mlx_slm

pytestmark = pytest.mark.mlx


def resident_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def test_twin_reads_the_models_exact_weights_and_keeps_assignments(tmp_path):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_slm.formats.dtypes import bfloat16
    from mlx_slm.runtime import numpy_twin

    config = tiny_config(torch_dtype="bfloat16")
    folder = write_model_folder(tmp_path / "bf16", config, tiny_weights(config, dtype=bfloat16))
    model, _ = mlx_slm.load(folder, backend="mlx")
    mlx_slm.quantize(model, bits=4, group_size=32, progress=False)
    twin = numpy_twin(model)
    params = dict(tree_flatten(model.parameters()))
    assert sorted(twin.weights) == sorted(params) and len(twin.weights) == len(params)
    for name, value in params.items():
        expected = np.array(value.astype(mx.float32) if value.dtype == mx.bfloat16 else value)
        np.testing.assert_array_equal(twin.weights[name], expected)
    for name in params:  # shapes, kinds and rows read without converting the tensor
        expected = twin.weights[name]
        assert twin.weights.describe(name) == (expected.shape, expected.dtype.kind), name
        rows = np.array([[expected.shape[0] - 1, 0], [1, 1]])
        np.testing.assert_array_equal(twin.weights.take(name, rows), expected[rows])
    norm = "model.norm.weight"
    twin.weights[norm] = np.full(params[norm].shape, 2.0, np.float32)
    assert float(twin.weights[norm][0]) == 2.0 and norm in twin.weights
    assert twin.weights.describe(norm) == (params[norm].shape, "f")
    assert float(params[norm][0].astype(mx.float32)) != 2.0  # the model is untouched


def test_calibration_holds_one_block_in_float32(tmp_path):
    from mlx_slm.calib.blocks import calibrate_blocks
    from mlx_slm.data.windows import calibration_windows
    from mlx_slm.runtime import numpy_twin

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, num_hidden_layers=4), backend="mlx")
    twin = numpy_twin(model)
    assert twin.dense_names() == []  # nothing converted up front
    tokens, _ = calibration_windows(tokenizer, ["the quick brown fox jumps over the lazy dog " * 40], 2, 16)
    names = [n[: -len(".weight")] for n in twin.weights if n.startswith("model.layers.") and n.endswith("proj.weight")]
    cached = []

    def update(block_names, stats):
        cached.append(len([n for n in twin.dense_names() if n.startswith("model.layers.")]))

    calibrate_blocks(twin, names, tokens, False, update, "test", progress=False)
    assert cached == [7, 7, 7, 7]  # the seven projections of the current block only


@pytest.mark.parametrize("quantized", [False, True])
def test_twin_converts_each_weight_once_per_call(tmp_path, monkeypatch, quantized):
    """Learning a layer's shape or format reads no tensor; a float layer beyond the cache (the embedding
    and head included) converts only a slice of rows at a time, never the whole tensor."""
    from mlx_slm.runtime import LazyNumpyWeights, numpy_twin

    config = tiny_config(torch_dtype="bfloat16")
    model, _ = mlx_slm.load(write_model_folder(tmp_path / "m", config, tiny_weights(config)), backend="mlx")
    if quantized:
        mlx_slm.quantize(model, bits=4, group_size=32, progress=False)
    twin = numpy_twin(model)
    twin.cache_bytes = 0  # every call converts again: what a model beyond the cache does
    expected = twin(np.array([[1, 5, 9]]))
    reads = []
    real = LazyNumpyWeights.__getitem__
    monkeypatch.setattr(LazyNumpyWeights, "__getitem__", lambda self, name: (reads.append(name), real(self, name))[1])
    twin.materialize()
    assert reads == []  # nothing fits a cache of 0 bytes, and finding that out reads no tensor
    np.testing.assert_array_equal(twin(np.array([[1, 5, 9]])), expected)
    if not quantized:  # float layers (the embedding and the head too) convert a slice of rows at a time
        read = [name for name in reads if name in twin.weights]  # get() of an absent bias reads nothing
        assert read and all(len(twin.describe(name)[0]) == 1 for name in read), read
        return
    # a quantized table is read by the embedding and the tied head
    twice = {f"model.embed_tokens.{s}" for s in ("weight", "scales", "biases")}
    assert "model.embed_tokens.weight" in reads and "model.layers.0.self_attn.q_proj.weight" in reads
    assert all(reads.count(name) == (2 if name in twice else 1) for name in reads), reads


def test_smollm2_twin_costs_no_memory_up_front(smollm2_dir):
    from mlx_slm.runtime import numpy_twin

    model, _ = mlx_slm.load(smollm2_dir, backend="mlx")
    before = resident_mb()
    twin = numpy_twin(model)
    grown = resident_mb() - before
    assert grown < 20, f"the twin allocated {grown:.0f} MB up front (an eager numpy copy is ~270 MB)"
    assert twin.dense("model.layers.0.mlp.down_proj").shape == (576, 1536)
