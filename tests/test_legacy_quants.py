"""Importance-weighted Q4_0/Q4_1/Q5_0/Q5_1 blocks (the k-quant presets' fallbacks): bytes the `gguf`
package reads back, an error no larger than ggml's own rounding, and importance that lowers the
weighted error."""

import numpy as np
import pytest
from test_kquants import gguf_values, matrices

from mlx_slm.errors import SLMError
from mlx_slm.export.legacy_quants import LEGACY, pack_legacy

TYPES = list(LEGACY)


def ggml_rounding(w, kind):
    """What the `gguf` package's quantizer (ggml's reference rounding, llama.cpp's without an
    importance matrix) gives back."""
    import gguf

    return gguf_values(gguf.quants.quantize(w, gguf.GGMLQuantizationType[kind]), kind).reshape(w.shape)


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("case", list(matrices()))
def test_gguf_reads_our_blocks(kind, case):
    """The bytes have ggml's size and dequantize to values whose squared error is at most that of ggml's
    own rounding (zero rows stay zero)."""
    w = matrices()[case]
    data = pack_legacy(w, None, kind)
    assert data.dtype == np.uint8 and data.shape == (w.shape[0], w.shape[1] // 32 * LEGACY[kind].block_bytes)
    ours = gguf_values(data, kind).reshape(w.shape)
    assert np.sum(np.square(ours - w)) <= np.sum(np.square(ggml_rounding(w, kind) - w)) * (1 + 1e-6) + 1e-12
    assert np.array_equal(ours[np.all(w == 0, axis=1)], w[np.all(w == 0, axis=1)])


@pytest.mark.parametrize("kind", TYPES)
def test_importance_lowers_the_weighted_error(kind):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 512)).astype(np.float32)
    importance = np.exp(2 * rng.standard_normal(512))
    weighted = {label: float(np.sum(importance * np.square(gguf_values(pack_legacy(w, given, kind), kind)
                                                            .reshape(w.shape) - w)))
                for label, given in (("uniform", None), ("importance", importance))}
    rounding = float(np.sum(importance * np.square(ggml_rounding(w, kind) - w)))
    assert weighted["importance"] < 0.8 * weighted["uniform"] < 0.8 * rounding, (weighted, rounding)


def test_errors():
    w = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    with pytest.raises(SLMError, match="multiple of 32"):
        pack_legacy(w[:, :48], None, "Q4_0")
    with pytest.raises(SLMError, match="one of"):
        pack_legacy(w, None, "Q8_0")
    with pytest.raises(SLMError, match="importance must have shape"):
        pack_legacy(w, np.ones(3), "Q5_0")
    with pytest.raises(SLMError, match="float16's range"):
        pack_legacy(np.full((1, 32), 3e9, np.float32), None, "Q4_1")
