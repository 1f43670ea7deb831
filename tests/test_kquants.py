"""k-quants packed by the project: bytes the `gguf` package reads back bit for bit, importance-weighted
choices, and errors in the order of the types' bits."""

import numpy as np
import pytest

from mlx_slm.errors import SLMError
from mlx_slm.export.kquant_blocks import KINDS, KQuantBlocks, pack_blocks
from mlx_slm.export.kquants import dequantized, pack_kquant, pack_q4_k, quantize_blocks

TYPES = list(KINDS)  # Q2_K .. Q6_K
MAX_ERROR = {"Q6_K": 0.02, "Q5_K": 0.035, "Q4_K": 0.075, "Q3_K": 0.18, "Q2_K": 0.35}  # of max |w|, on matrices()
RMS_GAUSSIAN = {"Q6_K": 0.0169, "Q5_K": 0.0346, "Q4_K": 0.0702, "Q3_K": 0.1438, "Q2_K": 0.2626}  # N(0, 1) weights


def gguf_values(data: np.ndarray, kind: str) -> np.ndarray:
    import gguf

    return np.asarray(gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind]), np.float32)


def matrices():
    """Random and structured [N, K] matrices: gaussian, heavy-tailed, all-positive, constant, zero
    rows, one outlier, tiny and large magnitudes."""
    rng = np.random.default_rng(7)
    gaussian = rng.standard_normal((8, 512)).astype(np.float32)
    heavy = rng.standard_t(2, (4, 256)).astype(np.float32)
    positive = np.abs(rng.standard_normal((3, 256))).astype(np.float32) + 0.5
    negative = -positive
    structured = np.zeros((5, 256), np.float32)
    structured[1] = 0.25
    structured[2, 17] = 40.0
    structured[3] = np.linspace(-3, 5, 256)
    structured[4, ::16] = -1e-3
    tiny = (rng.standard_normal((2, 256)) * 1e-4).astype(np.float32)
    large = (rng.standard_normal((2, 256)) * 300).astype(np.float32)
    return {"gaussian": gaussian, "heavy": heavy, "positive": positive, "negative": negative,
            "structured": structured, "tiny": tiny, "large": large}


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("case", list(matrices()))
def test_gguf_reads_our_values_bit_for_bit(kind, case):
    w = matrices()[case]
    importance = np.linspace(0.1, 3.0, w.shape[1]) ** 2
    blocks = quantize_blocks(w, importance, kind)
    data = pack_blocks(blocks).reshape(w.shape[0], -1)
    assert data.dtype == np.uint8 and data.shape == (w.shape[0], w.shape[1] // 256 * KINDS[kind].block_bytes)
    ours = dequantized(blocks, w.shape)
    assert np.array_equal(gguf_values(data, kind).view(np.uint32), ours.view(np.uint32))
    subnormal = 1.5e-5 if case == "tiny" else 0.0  # |w| ~ 1e-4: subnormal float16 super-scales, absolute precision
    assert np.max(np.abs(ours - w)) <= MAX_ERROR[kind] * np.abs(w).max() + subnormal
    assert np.array_equal(ours[np.all(w == 0, axis=1)], w[np.all(w == 0, axis=1)])  # zero rows stay zero


@pytest.mark.parametrize("kind", TYPES)
def test_every_field_value_round_trips(kind):
    """Extreme codes and sub-scales (every bit of every field) survive the layout."""
    spec = KINDS[kind]
    rng = np.random.default_rng(1)
    count = 6
    low, high = spec.scale_range
    mins = rng.integers(0, spec.min_max + 1, (count, spec.subs)).astype(np.int16)
    blocks = KQuantBlocks(spec, rng.integers(0, spec.code_max + 1, (count, 256)).astype(np.uint8),
                          rng.integers(low, high + 1, (count, spec.subs)).astype(np.int16),
                          rng.standard_normal(count).astype(np.float16), mins if spec.has_min else None,
                          rng.standard_normal(count).astype(np.float16) if spec.has_min else None)
    blocks.codes[0], blocks.scales[0] = spec.code_max, high
    blocks.codes[1], blocks.scales[1] = 0, low
    ours = dequantized(blocks, (count, 256))
    assert np.array_equal(gguf_values(pack_blocks(blocks), kind).view(np.uint32), ours.view(np.uint32))


def test_errors_follow_the_bits_on_gaussian_weights():
    w = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    rms = {kind: float(np.sqrt(np.mean(np.square(dequantized(quantize_blocks(w, None, kind), w.shape) - w))))
           for kind in TYPES}
    assert rms["Q6_K"] < rms["Q5_K"] < rms["Q4_K"] < rms["Q3_K"] < rms["Q2_K"]
    for kind, value in RMS_GAUSSIAN.items():
        assert value * 0.98 < rms[kind] < value * 1.02, (kind, rms[kind])
    import gguf

    q4_1 = gguf_values(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1), "Q4_1")
    assert rms["Q4_K"] < 0.92 * np.sqrt(np.mean(np.square(q4_1 - w)))  # 4.5 bpw beats Q4_1's 5


@pytest.mark.parametrize("kind", TYPES)
def test_importance_lowers_the_weighted_error(kind):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 512)).astype(np.float32)
    importance = np.exp(2 * rng.standard_normal(512))
    weighted = {}
    for label, given in (("uniform", None), ("importance", importance)):
        restored = dequantized(quantize_blocks(w, given, kind), w.shape)
        weighted[label] = float(np.sum(importance * np.square(restored - w)))
    ratio = weighted["importance"] / weighted["uniform"]
    assert ratio < {"Q6_K": 0.65, "Q5_K": 0.6, "Q4_K": 0.6, "Q3_K": 0.65, "Q2_K": 0.45}[kind], ratio


def test_pack_functions_and_errors():
    w = np.random.default_rng(3).standard_normal((2, 256)).astype(np.float32)
    assert np.array_equal(pack_q4_k(w), pack_kquant(w, None, "Q4_K"))
    with pytest.raises(SLMError, match="multiple of 256"):
        pack_kquant(w[:, :128], None, "Q4_K")
    with pytest.raises(SLMError, match="one of"):
        pack_kquant(w, None, "Q4_0")
    with pytest.raises(SLMError, match="importance must have shape"):
        pack_kquant(w, np.ones(3), "Q6_K")
    with pytest.raises(SLMError, match="non-finite"):
        pack_kquant(np.full((1, 256), np.inf, np.float32), None, "Q6_K")
    with pytest.raises(SLMError, match="float16's range"):
        pack_kquant(np.full((1, 256), 3e9, np.float32), None, "Q4_K")
