"""Wanda, imatrix's grid search, the refit and AWQ's search, written once over an engine's array operations,
choose the same values on MLX (forced here, as a GPU's rule would) as on numpy: the same codes and masks
but for float32 sums in another order (and MLX's refits in float32 where numpy's are float64), with the
same errors; MLX's round-to-nearest choice is ``mx.quantize``'s, equal to numpy's twin. A planted bug
(MLX rounding down instead of to the nearest) shows the comparisons can fail."""

import numpy as np
import pytest
from helpers import sample_text
from test_mlx_calibration import gemma3_folder, quantized
from test_mlx_sweeps import EQUAL_SHARE, assert_mostly_equal, layer, mlx_arrays, on_numpy_then_forced_onto_mlx

import mlx_slm
from mlx_slm.calib.statistics import NumpyArrays
from mlx_slm.formats.affine import dequantize_codes, unpack_codes
from mlx_slm.formats.dtypes import bfloat16
from mlx_slm.model_access import access
from mlx_slm.prune import prune
from mlx_slm.prune.wanda import wanda_mask
from mlx_slm.quant.awq import search_scales
from mlx_slm.quant.imatrix import weighted_group_error, weighted_quantize
from mlx_slm.quant.refit import refit_grid

pytestmark = pytest.mark.mlx

ERROR_TOLERANCE = 1e-3  # |error on MLX / on numpy - 1| (imatrix's weighted error, the refit's output error)
AWQ_TOLERANCE = 0.01  # |AWQ's error per alpha on MLX / on numpy - 1|


def row_errors(w, values, hessian, group_size):
    """Output error (w - w_hat) H (w - w_hat)^T per row, float64 [N]."""
    delta = np.asarray(w, np.float64) - dequantize_codes(*values, group_size, np.float32)
    return np.einsum("nk,kl,nl->n", delta, hessian, delta)


def imatrix_on_both(w, importance, bits, group_size, arrays):
    """(share of equal codes, imatrix's weighted error on ``arrays`` / on numpy) and the two results."""
    chosen = [weighted_quantize(w, importance, bits, group_size, np.float16, library) for library in (NumpyArrays,
                                                                                                      arrays)]
    errors = [weighted_group_error(w, dequantize_codes(*values, group_size, np.float32), importance, group_size).sum()
              for values in chosen]
    return float(np.mean(chosen[0][0] == chosen[1][0])), float(errors[1] / errors[0]), chosen


@pytest.mark.parametrize("dtype", [np.float16, bfloat16, np.float32])
@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mlx_round_to_nearest_is_numpys_twin(bits, group_size, dtype):
    arrays = mlx_arrays()
    w, _ = layer(96, 256, seed=bits)
    w[0, :group_size] = 0.25  # a flat group
    choices = [library.affine_codes(library.array(w).reshape(96, -1, group_size), bits, dtype)
               for library in (NumpyArrays, arrays)]
    for ours, theirs in zip(*choices, strict=True):
        np.testing.assert_array_equal(np.array(theirs), ours)


@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_imatrix_on_mlx_matches_numpy(bits, group_size):
    w, hessian = layer(96, 256, seed=bits)
    importance = np.diag(hessian)
    equal, ratio, (_, (q, scales, biases)) = imatrix_on_both(w.astype(bfloat16), importance, bits, group_size,
                                                            mlx_arrays())
    assert q.dtype == np.uint8 and q.shape == w.shape and scales.dtype == biases.dtype == np.float16
    assert equal >= EQUAL_SHARE and abs(ratio - 1) <= ERROR_TOLERANCE, (equal, ratio)


@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_refit_on_mlx_matches_numpy_and_lowers_every_row(bits, group_size):
    """Both refit numpy's imatrix grid to its codes; the products with H on MLX, the solves on numpy."""
    w, hessian = layer(96, 256, seed=bits + 10)
    q, scales, biases = weighted_quantize(w, np.diag(hessian), bits, group_size, np.float16)
    refitted = {name: refit_grid(w, q, scales, biases, hessian, group_size, arrays=arrays)
                for name, arrays in (("numpy", NumpyArrays), ("mlx", mlx_arrays()))}
    before = row_errors(w, (q, scales, biases), hessian, group_size)
    errors = {name: row_errors(w, (q, *values), hessian, group_size) for name, values in refitted.items()}
    assert refitted["mlx"][0].dtype == np.float16 and refitted["mlx"][0].shape == scales.shape
    assert np.all(errors["mlx"] <= before)
    assert abs(errors["mlx"].sum() / errors["numpy"].sum() - 1) <= ERROR_TOLERANCE
    assert np.mean(errors["mlx"] < before) >= 0.5  # the refit does something on most rows


@pytest.mark.parametrize("bits,group_size", [(3, 32), (4, 64)])
def test_awq_search_on_mlx_matches_numpy(bits, group_size):
    w, hessian = layer(64, 256, seed=bits + 20)
    layers = [(w.astype(np.float16), {"bits": bits, "group_size": group_size}, np.float16)]
    found = {name: search_scales(layers, np.diag(hessian), hessian.astype(np.float32), 5, arrays)
             for name, arrays in (("numpy", NumpyArrays), ("mlx", mlx_arrays()))}
    np.testing.assert_allclose(found["mlx"][2], found["numpy"][2], rtol=AWQ_TOLERANCE)
    assert found["numpy"][2][int(np.argmin(found["mlx"][2]))] <= found["numpy"][2].min() * (1 + AWQ_TOLERANCE)


@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"sparsity": 0.3}, {"pattern": (2, 4)}])
def test_wanda_on_mlx_matches_numpy(target):
    w, hessian = layer(96, 256, seed=5)
    masks = [wanda_mask(w, np.diag(hessian), arrays=arrays, **target) for arrays in (NumpyArrays, mlx_arrays())]
    for keep in masks:
        assert keep.dtype == bool and keep.shape == w.shape
        zeros = (~keep).sum(1)
        expected = 256 * target["pattern"][0] // target["pattern"][1] if "pattern" in target else None
        assert np.all(zeros == expected) if expected else zeros.max() - zeros.min() <= 1
    assert np.mean(masks[0] == masks[1]) >= EQUAL_SHARE


def test_a_planted_rounding_bug_on_mlx_fails_the_comparison(monkeypatch):
    """MLX's round_clip rounding down: imatrix's codes and error drift far from numpy's."""
    import mlx.core as mx

    arrays = mlx_arrays()
    w, hessian = layer(96, 256, seed=3)
    monkeypatch.setattr(arrays, "round_clip", staticmethod(lambda x, top: mx.clip(mx.floor(x), 0, top)))
    equal, ratio, _ = imatrix_on_both(w, np.diag(hessian), 3, 32, arrays)
    assert equal < EQUAL_SHARE and abs(ratio - 1) > ERROR_TOLERANCE, (equal, ratio)


def awq_codes_and_wanda_zeros(folder):
    """Tiny Gemma 3 (calibrated on the MLX engine): its AWQ codes (3 bits, group 32, unpacked) and its zeros
    after Wanda at 50%."""
    model, _ = quantized(folder, "awq", "mlx")
    codes = {name: unpack_codes(np.array(value), 3) for name, value in access(model).arrays().items()
             if np.array(value).dtype == np.uint32}
    model, tokenizer = mlx_slm.load(folder, backend="mlx", progress=False)
    prune(model, method="wanda", sparsity=0.5, calib=[sample_text(60)], tokenizer=tokenizer, num_samples=8,
          seq_len=64, progress=False)
    zeros = {name: np.array(value) == 0 for name, value in access(model).arrays().items()
             if name.startswith("model.layers.") and name.endswith("proj.weight")}
    return codes, zeros


def test_awq_and_wanda_on_the_mlx_engine_run_where_for_methods_says(tmp_path, monkeypatch):
    """AWQ (search and imatrix) and Wanda on the MLX engine with their algorithms on numpy (a CPU's rule),
    then forced onto MLX (a GPU's): the same codes and zeros (MLX's grid refits in float32, and each
    block's inputs come from the blocks before it)."""
    on_numpy, on_mlx, calls = on_numpy_then_forced_onto_mlx(monkeypatch, gemma3_folder(tmp_path),
                                                           awq_codes_and_wanda_zeros)
    assert calls
    assert_mostly_equal(on_numpy, on_mlx)
