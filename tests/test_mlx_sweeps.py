"""The column sweeps of GPTQ and SparseGPT, written once over an engine's array operations, choose the
same codes and masks on MLX as on numpy (float32 sums in another order may flip a rounding tie or a
near-equal score), with the same output error; which library the sweeps run on is one rule."""

import numpy as np
import pytest
from helpers import output_error, sample_text
from test_calibrated_quant import correlated_inputs, random_weight
from test_mlx_calibration import gemma3_folder, quantized

import mlx_slm
from mlx_slm.calib.statistics import NumpyArrays
from mlx_slm.formats.affine import dequantize_codes, unpack_codes
from mlx_slm.model_access import access
from mlx_slm.prune import prune
from mlx_slm.prune.sparsegpt import sparsegpt_prune
from mlx_slm.quant.gptq import gptq_quantize

pytestmark = pytest.mark.mlx

EQUAL_SHARE = 0.999  # codes / mask entries equal on both libraries (measured: all equal on these inputs)
# a whole model's: a flipped code changes the next blocks' inputs (measured: all equal on one machine, 96.9%
# on another, AVX2 without AVX-512); random 3-bit codes would agree on about an eighth
MODEL_EQUAL_SHARE = 0.95
ERROR_TOLERANCE = 0.01  # |output error on MLX / on numpy - 1|


def mlx_arrays():
    from mlx_slm.calib.mlx_engine import MLXArrays

    return MLXArrays


def layer(n: int, k: int, seed: int):
    """(weights float32 [N, K], Hessian float64 [K, K] of correlated inputs)."""
    x = correlated_inputs(k, tokens=1024, seed=seed)
    return random_weight(n, k, seed=seed + 1, dtype=np.float32), x.T.astype(np.float64) @ x / len(x)


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_sweep_on_mlx_matches_numpy(bits, group_size, act_order):
    """The numpy reference sweeps all 256 columns as one block (every update in-block); MLX's blocks of
    48 (the last one partial) take the lazy updates between blocks as well. Both on MLX's RTN grid: the
    imatrix grid, whose refits run in float32 on MLX, is compared in ``test_mlx_layer_methods``."""
    w, hessian = layer(96, 256, seed=bits)
    chosen = {name: gptq_quantize(w, hessian, bits, group_size, act_order=act_order, block_size=block_size,
                                  grid="rtn", arrays=arrays)
              for name, arrays, block_size in (("numpy", NumpyArrays, 256), ("mlx", mlx_arrays(), 48))}
    assert chosen["mlx"][0].dtype == np.uint8 and chosen["mlx"][0].shape == w.shape
    assert np.mean(chosen["mlx"][0] == chosen["numpy"][0]) >= EQUAL_SHARE
    errors = {name: output_error(w, dequantize_codes(*values, group_size, np.float32), hessian)
              for name, values in chosen.items()}
    assert abs(errors["mlx"] / errors["numpy"] - 1) <= ERROR_TOLERANCE, errors


@pytest.mark.parametrize("target,block_sizes", [
    ({"sparsity": 0.5}, (128, 128)),
    ({"sparsity": 0.3}, (64, 64)),  # 160 columns: the last block is partial
    ({"pattern": (2, 4)}, (160, 32)),  # N:M masks do not depend on the blocks: numpy's sweep is one block
])
def test_sparsegpt_sweep_on_mlx_matches_numpy(target, block_sizes):
    w, hessian = layer(48, 160, seed=7)
    pruned = {name: sparsegpt_prune(w, hessian, block_size=block_size, arrays=arrays, **target)
              for name, arrays, block_size in zip(("numpy", "mlx"), (NumpyArrays, mlx_arrays()), block_sizes)}
    zeros = round(target["pattern"][0] / target["pattern"][1] * w.size) if "pattern" in target else \
        round(target["sparsity"] * w.size)
    for weights, keep in pruned.values():
        assert weights.dtype == np.float32 and keep.dtype == bool
        np.testing.assert_array_equal(weights == 0, ~keep)
        assert np.count_nonzero(~keep) == zeros
        if "pattern" in target:
            assert np.all((~keep).reshape(len(w), -1, 4).sum(-1) == 2)
    assert np.mean(pruned["mlx"][1] == pruned["numpy"][1]) >= EQUAL_SHARE
    errors = {name: output_error(w, weights, hessian) for name, (weights, _) in pruned.items()}
    assert abs(errors["mlx"] / errors["numpy"] - 1) <= ERROR_TOLERANCE, errors


def test_sweeps_run_on_mlx_only_on_a_gpu():
    import mlx.core as mx

    arrays = mlx_arrays()
    assert NumpyArrays.for_methods() is NumpyArrays
    device = mx.default_device()
    try:
        mx.set_default_device(mx.cpu)
        assert arrays.for_methods() is NumpyArrays
        if mx.metal.is_available():
            mx.set_default_device(mx.gpu)
            assert arrays.for_methods() is arrays
    finally:
        mx.set_default_device(device)


def gptq_codes_and_sparsegpt_zeros(folder):
    """Tiny Gemma 3 (calibrated on the MLX engine): its GPTQ codes (3 bits, group 32, unpacked) and its zeros
    after SparseGPT 2:4."""
    model, _ = quantized(folder, "gptq", "mlx")
    codes = {name: np.array(value) for name, value in access(model).arrays().items()}
    codes = {name: unpack_codes(value, 3) for name, value in codes.items() if value.dtype == np.uint32}
    model, tokenizer = mlx_slm.load(folder, backend="mlx", progress=False)
    prune(model, method="sparsegpt", pattern="2:4", calib=[sample_text(60)], tokenizer=tokenizer, num_samples=8,
          seq_len=64, progress=False)
    zeros = {name: np.array(value) == 0 for name, value in access(model).arrays().items()
             if name.startswith("model.layers.") and name.endswith("proj.weight")}
    return codes, zeros


def on_numpy_then_forced_onto_mlx(monkeypatch, folder, run) -> tuple:
    """(``run(folder)`` with the per-layer algorithms where ``for_methods`` says on a CPU (numpy), then
    forced onto MLX, the number of times ``for_methods`` was asked while forced)."""
    arrays = mlx_arrays()
    on_numpy = run(folder)
    calls = []
    monkeypatch.setattr(arrays, "for_methods", staticmethod(lambda: calls.append(1) or arrays))
    return on_numpy, run(folder), len(calls)


def assert_mostly_equal(on_numpy, on_mlx, share: float = EQUAL_SHARE) -> None:
    """Each pair of {name: array} results holds the same names and >= ``share`` equal entries."""
    for numpy_result, mlx_result in zip(on_numpy, on_mlx):
        assert numpy_result.keys() == mlx_result.keys() and numpy_result
        equal = np.concatenate([(mlx_result[name] == numpy_result[name]).ravel() for name in numpy_result])
        assert equal.mean() >= share, equal.mean()


def test_calibration_on_mlx_runs_the_sweeps_where_for_methods_says(tmp_path, monkeypatch):
    """GPTQ and SparseGPT on the MLX engine with their per-layer algorithms on numpy (a CPU's rule), then
    forced onto MLX (a GPU's): the same codes and zeros (GPTQ's imatrix grid refits in float32 on MLX,
    float64 on numpy, so a group's grid may differ by a rounding, and each block's inputs come from the
    blocks before it, so a flipped code may move the next blocks' statistics a little)."""
    on_numpy, on_mlx, calls = on_numpy_then_forced_onto_mlx(monkeypatch, gemma3_folder(tmp_path),
                                                           gptq_codes_and_sparsegpt_zeros)
    assert calls == 4 * 4 + 1 + 4 * 7  # GPTQ: q/k/v, o, gate/up, down per block and the head; SparseGPT
    assert_mostly_equal(on_numpy, on_mlx, MODEL_EQUAL_SHARE)
