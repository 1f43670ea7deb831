"""GPTQ for the ternary formats: the sweep on the tied three-level grid, the scale refit, whole models."""

import json

import numpy as np
import pytest
from helpers import sample_text, tiny_config, tiny_weights, write_model_folder

import mlx_slm
from mlx_slm.formats import ternary
from mlx_slm.io import safetensors_np
from mlx_slm.quant.ternary_gptq import gptq_ternary, refit_scales, row_errors

TOKENS = np.array([[3, 77, 120, 9, 200, 15, 64, 31, 250, 7]], dtype=np.int32)


def correlated_hessian(k: int, seed: int = 0) -> np.ndarray:
    """E[x x^T] float32 [k, k] of activations with correlated columns and uneven scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * k, k)) @ (rng.standard_normal((k, k)) * 0.3 + np.eye(k))
    x = x * np.exp(rng.standard_normal(k))
    return (x.T @ x / len(x)).astype(np.float32)


def weight(n: int, k: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, k)) * 0.05).astype(np.float16)


def errors(w, codes, scales, group_size, hessian) -> np.ndarray:
    return row_errors(w, ternary.dequantize_codes(codes, scales, group_size, np.float64), hessian.astype(np.float64))


@pytest.mark.parametrize("group_size", [0, 32])
def test_without_correlated_inputs_the_sweep_rounds_each_weight_on_the_fixed_grid(group_size):
    """A diagonal Hessian spreads no error: each code is a nearest of {-s, 0, s} to its weight (either
    at an exact tie), with the scales chosen up front (absmean refitted on the importance)."""
    w = weight(24, 128)
    diagonal = np.exp(np.random.default_rng(2).standard_normal(128)).astype(np.float32)
    codes, scales = gptq_ternary(w, np.diag(diagonal), group_size, refit=False)
    _, expected_scales = ternary.quantize_values(w, group_size, importance=diagonal)
    assert np.array_equal(scales, expected_scales) and scales.dtype == np.float16
    steps = np.repeat(expected_scales.astype(np.float64), group_size or 128, axis=1)
    distances = np.abs(w.astype(np.float64)[..., None] - steps[..., None] * np.array([-1.0, 0.0, 1.0]))
    chosen = np.take_along_axis(distances, codes[..., None].astype(int), axis=-1)[..., 0]
    assert codes.dtype == np.uint8 and codes.max() <= 2
    np.testing.assert_allclose(chosen, distances.min(-1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("group_size", [0, 32])
def test_gptq_lowers_the_output_error_of_the_imatrix_choice_and_the_refit_never_raises_a_rows(group_size):
    """On correlated inputs the sweep's codes cost at most 70% of the imatrix choice's output error
    (measured: about 55%), and the refit lowers it further without making any row worse."""
    w, hessian = weight(64, 128), correlated_hessian(128)
    start = ternary.quantize_values(w, group_size, importance=np.diag(hessian))
    swept = gptq_ternary(w, hessian, group_size, refit=False)
    refitted = gptq_ternary(w, hessian, group_size)
    assert np.array_equal(refitted[0], swept[0])  # the refit keeps the codes
    before, after = errors(w, *swept, group_size, hessian), errors(w, *refitted, group_size, hessian)
    assert after.sum() <= 0.7 * errors(w, *start, group_size, hessian).sum()
    assert np.all(after <= before) and after.sum() < before.sum()


def test_refit_scales_are_the_least_squares_solution_in_the_hessians_metric():
    """Each row's new scales equal numpy's least squares of ||L^T (w - B s)|| (H = L L^T, B the row's
    trits split by group), rounded to float16, wherever they lower the row's error."""
    group_size, w, hessian = 32, weight(16, 128), correlated_hessian(128, seed=3)
    codes, scales = gptq_ternary(w, hessian, group_size, refit=False)
    fitted = refit_scales(w, codes, scales, hessian, group_size)
    lower = np.linalg.cholesky(hessian.astype(np.float64))
    trits = codes.astype(np.float64) - 1
    changed = 0
    for row in range(len(w)):
        basis = np.zeros((128, 4))
        for g in range(4):
            basis[g * 32 : (g + 1) * 32, g] = trits[row, g * 32 : (g + 1) * 32]
        solution = np.linalg.lstsq(lower.T @ basis, lower.T @ w[row].astype(np.float64), rcond=None)[0]
        if not np.array_equal(fitted[row], scales[row]):
            changed += 1
            np.testing.assert_allclose(fitted[row].astype(np.float64), solution, rtol=2e-3)
    assert changed >= len(w) // 2


def ternary_folder(tmp_path):
    config = tiny_config(vocab_size=272)
    return write_model_folder(tmp_path / "tiny", config, tiny_weights(config, 0))


@pytest.mark.parametrize("name,group_size", [("ternary", 0), ("ternary_b3", 64)])
def test_a_ternary_gptq_model_saves_what_it_computes_and_beats_imatrix_on_its_calibration_text(tmp_path, name,
                                                                                              group_size):
    """quantize(method="gptq", format=ternary*): every linear and the tied embedding stored as trits;
    the saved model computes the same logits; its KL to the float model on the calibration text is
    lower than the imatrix choice's; the MLX backend stores the same arrays."""
    folder = ternary_folder(tmp_path)
    reference, tokenizer = mlx_slm.load(folder, backend="numpy")
    text = sample_text(40)
    calib = {"calib": [text], "tokenizer": tokenizer, "num_samples": 6, "seq_len": 64, "progress": False}
    kl = {}
    for method in ("imatrix", "gptq"):
        model, _ = mlx_slm.load(folder, backend="numpy")
        mlx_slm.quantize(model, format=name, bits=2, group_size=group_size, method=method, **calib)
        kl[method] = mlx_slm.evaluate(model, tokenizer, [text], reference=reference, seq_len=64, max_windows=4,
                                      decode_tokens=0, progress=False)["kld"]
    assert kl["gptq"] < kl["imatrix"]
    assert mlx_slm.stats.weight_stats(model)["quantized_layers"] == 15
    out = mlx_slm.save(model, tokenizer, tmp_path / "q")
    saved = json.loads((out / "config.json").read_text())
    assert saved["quantization"] == {"group_size": group_size, "bits": 2, "mode": name}
    assert saved["mlx_slm"]["method"] == "gptq"
    again, _ = mlx_slm.load(out, backend="numpy")
    assert np.array_equal(again(TOKENS), model(TOKENS))
    arrays = safetensors_np.load(out / "model.safetensors")
    codes = arrays["model.layers.0.mlp.down_proj.weight"]
    assert codes.dtype == (np.uint8 if name == "ternary_b3" else np.uint32)
    assert "model.layers.0.mlp.down_proj.biases" not in arrays
    if mlx_slm.backend.mlx_available():
        on_mlx, _ = mlx_slm.load(folder, backend="mlx")
        mlx_slm.quantize(on_mlx, format=name, bits=2, group_size=group_size, method="gptq", **calib)
        written = safetensors_np.load(mlx_slm.save(on_mlx, tokenizer, tmp_path / "mlx") / "model.safetensors")
        assert written.keys() == arrays.keys()
        for key, value in arrays.items():
            assert np.array_equal(written[key], value), key
