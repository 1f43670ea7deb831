"""IQ4_NL blocks packed by the project: bytes the `gguf` package reads back bit for bit, a weighted search
never worse than absmax scaling (and clearly better on random matrices), importance that lowers the
weighted error, and GGUF files with IQ4_NL tensors that read back."""

import numpy as np
import pytest
from test_gguf_export import expected, read_back
from test_kquants import gguf_values, matrices

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.export.gguf import gguf_name
from mlx_slm.export.iq4_nl import KVALUES, dequantize_iq4_nl, pack_indices, pack_iq4_nl, quantize_iq4_nl
from mlx_slm.export.weights import ModelWeights

# Largest weighted error of the search as a fraction of absmax scaling's, per random matrix (distribution,
# weighted); measured 0.85 / 0.91 unweighted and 0.44 / 0.56 with uneven importance.
MARGIN = {("gaussian", False): 0.9, ("t3", False): 0.95, ("gaussian", True): 0.5, ("t3", True): 0.65}


def brute_nearest(w: np.ndarray, d: np.ndarray) -> np.ndarray:
    """float32 values [N, K] of the table entries nearest to each weight on its block's scale d [N, K/32],
    by trying all 16."""
    grid = d.astype(np.float32)[..., None, None] * KVALUES  # [N, B, 1, 16]
    x = w.reshape(*d.shape, 32)[..., None]
    return np.take_along_axis(grid, np.abs(x - grid).argmin(-1)[..., None], -1)[..., 0].reshape(w.shape)


def absmax(w: np.ndarray) -> np.ndarray:
    """Plain absmax scaling: per block d = float16(peak / -127) (the peak on the table's wider end), the
    nearest entries -> float32 values [N, K]."""
    x = w.reshape(w.shape[0], -1, 32)
    peak = np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)[..., 0]
    return brute_nearest(w, (peak / np.float32(-127)).astype(np.float16))


def block_errors(w, values, importance) -> np.ndarray:
    """Weighted squared error per block [N, K/32] (float64)."""
    wt = np.ones(w.shape[1]) if importance is None else importance
    return (wt * np.square(values.astype(np.float64) - w)).reshape(w.shape[0], -1, 32).sum(-1)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("case", list(matrices()))
def test_gguf_reads_our_values_bit_for_bit(case, weighted):
    """gguf.quants reads our bytes as exactly our values; each weight is on its block's nearest entry;
    zero rows stay zero; the error is within the table's widest half-gap of the largest |w|."""
    w = matrices()[case]
    importance = np.linspace(0.1, 3.0, w.shape[1]) ** 2 if weighted else None
    indices, d = quantize_iq4_nl(w, importance)
    data = pack_indices(indices, d)
    assert data.dtype == np.uint8 and data.shape == (w.shape[0], w.shape[1] // 32 * 18)
    assert np.array_equal(data, pack_iq4_nl(w, importance))
    ours = dequantize_iq4_nl(indices, d)
    assert np.array_equal(gguf_values(data, "IQ4_NL").view(np.uint32), ours.view(np.uint32))
    assert np.array_equal(np.abs(ours - w), np.abs(brute_nearest(w, d) - w))
    assert np.array_equal(ours[np.all(w == 0, axis=1)], w[np.all(w == 0, axis=1)])
    subnormal = 3e-6 if case == "tiny" else 0.0  # |w| ~ 1e-4: float16 scales near 1e-6 are subnormal
    assert np.max(np.abs(ours - w)) <= 12 / 127 * np.abs(w).max() * 1.01 + subnormal


def test_every_field_value_round_trips():
    """Every index at every position, and scales at float16's extremes (largest, subnormal, negative, zero)."""
    rng = np.random.default_rng(1)
    indices = np.tile(np.arange(16, dtype=np.uint8), (6, 8))  # [6, 128]: each index at each nibble position
    indices[3:] = rng.integers(0, 16, (3, 128), dtype=np.uint8)
    d = np.array([[65504, -65504, 6e-8, -6e-8], [0, -0.0, 1, -1], [2.5e-3, -7.1, 1e-5, 3e4]] * 2, np.float16)
    ours = dequantize_iq4_nl(indices, d)
    assert np.array_equal(gguf_values(pack_indices(indices, d), "IQ4_NL").view(np.uint32), ours.view(np.uint32))
    assert ours[0, 0] == np.float32(65504) * -127 and ours[0, 31] == np.float32(65504) * 113


@pytest.mark.parametrize("weighted", [False, True])
def test_search_beats_absmax(weighted):
    """On gaussian and heavy-tailed matrices the weighted error is never above absmax scaling's in any
    block, and at most MARGIN of it in total."""
    rng = np.random.default_rng(3)
    importance = np.exp(2 * rng.standard_normal(512)) if weighted else None
    for label, w in (("gaussian", rng.standard_normal((48, 512))), ("t3", rng.standard_t(3, (48, 512)))):
        w = w.astype(np.float32)
        ours = block_errors(w, dequantize_iq4_nl(*quantize_iq4_nl(w, importance)), importance)
        plain = block_errors(w, absmax(w), importance)
        assert np.all(ours <= plain * (1 + 1e-6))
        assert ours.sum() <= MARGIN[label, weighted] * plain.sum(), (label, ours.sum() / plain.sum())


def test_importance_lowers_the_weighted_error():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 512)).astype(np.float32)
    importance = np.exp(2 * rng.standard_normal(512))
    weighted = {label: block_errors(w, dequantize_iq4_nl(*quantize_iq4_nl(w, given)), importance).sum()
                for label, given in (("uniform", None), ("importance", importance))}
    assert weighted["importance"] < 0.7 * weighted["uniform"], weighted


def test_errors():
    w = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    with pytest.raises(SLMError, match="multiple of 32"):
        pack_iq4_nl(w[:, :48])
    with pytest.raises(SLMError, match="importance must have shape"):
        pack_iq4_nl(w, np.ones(3))
    with pytest.raises(SLMError, match="non-finite"):
        pack_iq4_nl(np.where(w > 1, np.inf, w))
    with pytest.raises(SLMError, match="float16's range"):
        pack_iq4_nl(np.full((1, 32), 3e9, np.float32))


def test_export_with_iq4_nl_reads_back(tmp_path):
    """A per-tensor plan of IQ4_NL (and Q8_0 for the attention output): the `gguf` reader finds those types
    at 18 bytes per 32 weights and values bit for bit our own choice for the (uncalibrated) weight, the file
    type is llama.cpp's MOSTLY_IQ4_NL, and mlx_slm.load reads the same values."""
    from helpers import tiny_model_folder

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy", progress=False)
    names = [gguf_name(name) for name, value in dict(ModelWeights(model)).items() if value.ndim == 2]
    plan = {name: "Q8_0" if "attn_output" in name else "iq4_nl" for name in names}
    report = mlx_slm.export_gguf(model, tokenizer, tmp_path / "iq4.gguf", kquant=plan)
    reader, tensors, values = read_back(tmp_path / "iq4.gguf")
    assert int(reader.fields["general.file_type"].contents()) == 25
    assert {t.name: t.kind for t in report.tensors if len(t.shape) == 2} == {k: v.upper() for k, v in plan.items()}
    checked = 0
    for name, (_, weight) in expected(model).items():
        if plan.get(name) != "iq4_nl":
            continue
        assert tensors[name].tensor_type.name == "IQ4_NL" and int(tensors[name].n_bytes) == weight.size // 32 * 18
        assert np.array_equal(values[name], dequantize_iq4_nl(*quantize_iq4_nl(weight)))
        checked += 1
    assert checked == len(names) - 2  # all but the two layers' attn_output
    back, _ = mlx_slm.load(tmp_path / "iq4.gguf", backend="numpy", dtype="float32", progress=False)
    up = "model.layers.1.mlp.up_proj.weight"
    assert np.array_equal(np.asarray(dict(ModelWeights(back))[up]), values["blk.1.ffn_up.weight"])
