"""The affine format: numpy twin bit-exact with mx.quantize / mx.dequantize."""

import itertools
import tracemalloc

import numpy as np
import pytest

from mlx_slm.errors import SLMError
from mlx_slm.formats import affine
from mlx_slm.formats.dtypes import bfloat16

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": bfloat16}


def awkward_weights(rng, rows, cols, group_size):
    """Random rows at many scales, plus groups that are constant, zero, or one-signed."""
    w = (rng.standard_normal((rows, cols)) * rng.uniform(1e-3, 3.0, (rows, 1))).astype(np.float32)
    w[0, :group_size] = 0.0
    w[1, :group_size] = 1.5
    w[2, :group_size] = -np.linspace(0.0, 1.0, group_size)
    w[3, :group_size] = np.linspace(0.0, 2.0, group_size)
    return w


def test_pack_codes_known_words():
    # 4-bit codes 0..7 pack little-endian into one word: 0x76543210.
    codes = np.arange(8, dtype=np.uint8)[None]
    assert affine.pack_codes(codes, 4).tolist() == [[0x76543210]]
    assert affine.unpack_codes(np.array([[0x76543210]], np.uint32), 4).tolist() == [list(range(8))]
    assert affine.unpack_codes(np.array([[0xE4]], np.uint32), 2).tolist() == [[0, 1, 2, 3] + [0] * 12]
    # 3-bit codes cross word borders: 32 codes of value 5 (0b101) make 3 words.
    words = affine.pack_codes(np.full((1, 32), 5, np.uint8), 3)
    stream = "".join(format(w, "032b")[::-1] for w in words[0])
    assert stream == "101" * 32


@pytest.mark.parametrize("bits", affine.BITS)
def test_codes_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(5, 256), dtype=np.uint8)
    packed = affine.pack_codes(codes, bits)
    assert packed.dtype == np.uint32 and packed.shape == (5, 256 * bits // 32)
    assert np.array_equal(affine.unpack_codes(packed, bits), codes)


@pytest.mark.parametrize("bits", [3, 4])
def test_codes_are_packed_in_row_slices_with_bounded_temporaries(monkeypatch, bits):
    """Slices of rows give the words of one piece (3-bit codes straddle words), and (un)packing a
    matrix of 2M codes holds temporaries of a slice, not of the matrix."""
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(3, 7, 64), dtype=np.uint8)
    whole = affine.pack_codes(codes, bits)
    monkeypatch.setattr(affine, "ROW_SLICE_CODES", 128)  # 2 rows a slice, and a shorter last one
    assert np.array_equal(affine.pack_codes(codes, bits), whole)
    assert np.array_equal(affine.unpack_codes(whole, bits), codes)
    monkeypatch.setattr(affine, "ROW_SLICE_CODES", 1 << 16)
    big = rng.integers(0, 2**bits, size=(4096, 512), dtype=np.uint8)
    tracemalloc.start()
    try:
        packed = affine.pack_codes(big, bits)
        _, packing = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        unpacked = affine.unpack_codes(packed, bits)
        _, unpacking = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(unpacked, big)
    # outputs (packed: bits/8 bytes a code; unpacked: 1 byte a code, both alive in the second) plus slices
    # of 64k codes at up to 24 bytes a code (the whole matrix at once: 16-35 MB)
    slice_bytes = 24 * (1 << 16)
    assert packing < big.size * bits / 8 + slice_bytes, packing
    assert unpacking < big.size * (1 + bits / 8) + slice_bytes, unpacking


def test_hand_computed_group():
    # w = [-1, 0, 0.5, 1] * 8 at 2 bits: max-magnitude edge is ... both 1; MLX takes w_max.
    w = np.tile(np.array([-1.0, 0.0, 0.5, 1.0], np.float32), 8)[None]
    q, scales, biases = affine.quantize_codes(w, 2, 32)
    # scale = -(2/3), q0 = rint(1 / -(2/3)) = -2 -> scale = 1 / -2 = -0.5, bias = 1
    assert scales.tolist() == [[-0.5]] and biases.tolist() == [[1.0]]
    assert q[0, :4].tolist() == [3, 2, 1, 0]
    assert affine.unpack(affine.pack_codes(q, 2), scales, biases, 2, 32)[0, :4].tolist() == [-0.5, 0.0, 0.5, 1.0]


def test_matmul_matches_dense():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 128)).astype(np.float32)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    packed, scales, biases = affine.pack(w, 4, 64)
    dense = affine.unpack(packed, scales, biases, 4, 64)
    np.testing.assert_allclose(affine.matmul(x, packed, scales, biases, 4, 64), x @ dense.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,group_size", [(7, 64), (4, 48), (4, 256)])
def test_rejects_unsupported_settings(bits, group_size):
    with pytest.raises(SLMError):
        affine.pack(np.zeros((4, 256), np.float32), bits, group_size)


def test_rejects_indivisible_width():
    with pytest.raises(SLMError, match="not divisible"):
        affine.pack(np.zeros((4, 576), np.float32), 4, 128)


@pytest.mark.mlx
@pytest.mark.parametrize("dtype,bits,group_size",
                         list(itertools.product(DTYPES, affine.BITS, affine.GROUP_SIZES)))
def test_bit_exact_with_mlx_random(dtype, bits, group_size):
    import mlx.core as mx

    rng = np.random.default_rng(bits * 1000 + group_size)
    w_mx = mx.array(awkward_weights(rng, 32, 512, group_size)).astype(getattr(mx, dtype))
    w_np = np.array(w_mx.astype(mx.float32)).astype(DTYPES[dtype])
    ref_q, ref_s, ref_b = mx.quantize(w_mx, group_size=group_size, bits=bits)
    q, s, b = affine.pack(w_np, bits, group_size)
    assert np.array_equal(np.array(ref_q), q)
    assert np.array_equal(np.array(ref_s.astype(mx.float32)), s.astype(np.float32))
    assert np.array_equal(np.array(ref_b.astype(mx.float32)), b.astype(np.float32))
    ref_w = mx.dequantize(ref_q, ref_s, ref_b, group_size=group_size, bits=bits)
    ours = affine.unpack(q, s, b, bits, group_size).astype(np.float32)
    assert np.array_equal(np.array(ref_w.astype(mx.float32)), ours)


@pytest.mark.mlx
@pytest.mark.parametrize("bits", affine.BITS)
def test_bit_exact_with_mlx_on_smollm2(smollm2_dir, bits):
    import mlx.core as mx

    from mlx_slm.io import safetensors_np

    weights = safetensors_np.load(smollm2_dir / "model.safetensors")
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.7.self_attn.k_proj.weight",
             "model.layers.29.mlp.down_proj.weight", "model.layers.13.mlp.gate_proj.weight"]
    for name, group_size in itertools.product(names, affine.GROUP_SIZES):
        w = np.asarray(weights[name])
        if w.shape[-1] % group_size:
            continue
        ref = mx.quantize(mx.array(w), group_size=group_size, bits=bits)
        mine = affine.pack(w, bits, group_size)
        for a, b in zip(ref, mine):
            assert np.array_equal(np.array(a.astype(mx.float32) if a.dtype != mx.uint32 else a),
                                  b.astype(np.float32) if b.dtype != np.uint32 else b), (name, group_size)


def test_registry():
    from mlx_slm.formats import get_format

    fmt = get_format("affine")
    assert fmt.pack is affine.pack and fmt.stored == ("weight", "scales", "biases")
    assert fmt.bits_per_weight(3, 64) == 3.5
    with pytest.raises(SLMError, match="unknown weight format 'q4_k'; known: affine, lut, ternary, ternary_b3"):
        get_format("q4_k")
