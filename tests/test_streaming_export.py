"""Exports write their files one tensor at a time: the bytes are those the whole-file writer wrote, and
no more than one converted or encoded tensor is alive at any moment."""

import hashlib
import tracemalloc
import weakref

import pytest
from helpers import tiny_model_folder
from test_gguf_export import tiny
from test_kquant_export import CALIBRATION, kquant_model

import mlx_slm
from mlx_slm.data.windows import Calibration
from mlx_slm.export import gguf as gguf_export
from mlx_slm.export import weights as export_weights
from mlx_slm.export.gguf_tensors import Encoded

AFFINE_MIX = {"bits": 4, "group_size": 32, "config": {"by_type": {"down_proj": {"bits": 8}, "v_proj": {"bits": 5}},
                                                      "by_name": {"model.layers.1.mlp.up_proj": "fp16"}}}
CASES = {  # name: (backend, model settings, export keywords, SHA-256 and size of the file)
    "f16-llama": ("numpy", {}, {}, "534fdc765afb78c6f552b639ce7342c4e56a1b05cf6466ae2ccdf25cc9457092", 569216),
    "bf16-llama-untied": ("numpy", {"tied": False}, {"types": "bf16"},
                          "5f2fa0e366f39dcc938c156be443cd02b2630693fc61df7477001c44cedd33b2", 638400),
    "q8_0-qwen2": ("numpy", {"model_type": "qwen2"}, {"types": "q8_0"},
                   "c02be99dea48de3192a490a6a14d14504a77405ce9d05ed3a7f17a842d313a2e", 308736),
    "f32-qwen3-untied": ("numpy", {"model_type": "qwen3", "tied": False}, {"types": "f32"},
                         "a6797a40b64274634060167fcc161849534dd44d2db3c081a974c5ed49009498", 1268832),
    "affine-mix": ("numpy", AFFINE_MIX, {}, "c768d3577c4b1b467e9e4caca857f112e3062e712c0158040b25ceb296a8bc46",
                   241120),
    "affine-mix-requantize-f16": ("numpy", AFFINE_MIX, {"types": {"requantize": "f16"}},
                                  "7a5bbbc466c705dd395630fc3d87c18445586eb0519bbcbeb79a909e985e0e02", 287200),
    "lut4": ("numpy", {"format": "lut", "bits": 4, "group_size": 8}, {},
             "9e4edc428c078b9fe19131e3f40e483789c6dd7c262afd19eea11cc032133e3e", 569216),
    "q4_k_m-untied": ("kquant", {"tied": False}, {"kquant": "q4_k_m"},
                      "d58e447dd99a2d80c3b54ae11df15af8e84ec01f6fafafd1badd1eb615161cc6", 1523520),
    "q3_k_m-calibrated": ("kquant", {}, {"kquant": "q3_k_m", "calibration": (16, 64)},
                          "e10661d387817fd0c969783c2c56319a9814db052c50e120ff8e9e41cc60b51d", 1216800),
    "mlx-bf16": ("mlx", {}, {"types": "f16"}, "b62093d7beaf132b7b5bbdf3117b8396096752fe7dc14f5ebc52c34963cb6525",
                 569216),
    "mlx-affine-mix": ("mlx", AFFINE_MIX, {}, "c768d3577c4b1b467e9e4caca857f112e3062e712c0158040b25ceb296a8bc46",
                       241120),
}


def case_export(tmp_path, case, path):
    """Build the case's model and export it to ``path``; returns the report."""
    backend, settings, keywords, _, _ = CASES[case]
    if backend == "kquant":
        model, tokenizer = kquant_model(tmp_path, **settings)
    else:
        model, tokenizer = tiny(tmp_path, backend=backend, **settings)
    if case == "mlx-bf16":
        import mlx.core as mx

        model.set_dtype(mx.bfloat16)
    keywords = dict(keywords)
    if "calibration" in keywords:
        keywords["calibration"] = Calibration(CALIBRATION, tokenizer, *keywords["calibration"])
    return mlx_slm.export_gguf(model, tokenizer, path, **keywords)


def cases(*names):
    return [pytest.param(c, marks=[pytest.mark.mlx] if CASES[c][0] == "mlx" else []) for c in names or CASES]


@pytest.mark.parametrize("slice_weights", [None, 1000])
@pytest.mark.parametrize("case", cases())
def test_gguf_bytes_are_those_of_the_whole_file_writer(tmp_path, monkeypatch, case, slice_weights):
    """The streamed file is byte for byte what the former export wrote (every tensor encoded, held, then
    written by gguf's ``write_tensors_to_file``; these digests were taken from that code): float, exact
    Q4_1/Q5_1, requantized, dequantized lut and k-quant tensors, tied and untied heads, both backends;
    whole tensors, and slices of a few rows (1000 weights: 7 rows of 128, 3 of 256, 1 of 512), Q/K
    permuted rows included."""
    if slice_weights:
        monkeypatch.setattr(export_weights, "SLICE_WEIGHTS", slice_weights)
    case_export(tmp_path, case, tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    assert (hashlib.sha256(data).hexdigest(), len(data)) == CASES[case][3:]


def track(monkeypatch, module, name: str) -> dict:
    """Wrap ``module.name`` so every result (an :class:`Encoded`'s data array) is watched: returns
    {"calls": n, "alive": the most earlier results still alive when a call started}."""
    original, results, seen = getattr(module, name), [], {"calls": 0, "alive": 0}

    def watched(*args, **kwargs):
        seen["alive"] = max(seen["alive"], sum(ref() is not None for ref in results))
        seen["calls"] += 1
        result = original(*args, **kwargs)
        results.append(weakref.ref(result.data if isinstance(result, Encoded) else result))
        return result

    monkeypatch.setattr(module, name, watched)
    return seen


@pytest.mark.parametrize("case", cases("f16-llama", "affine-mix", "lut4", "q4_k_m-untied"))
def test_gguf_holds_one_encoded_tensor(tmp_path, monkeypatch, case):
    """When a tensor is encoded, no earlier tensor's encoded data is alive: each is written and dropped
    first (the former export held all of them until the end)."""
    seen = [track(monkeypatch, gguf_export, name) for name in ("encode", "encode_quantized")]
    report = case_export(tmp_path, case, tmp_path / "m.gguf")
    assert sum(s["calls"] for s in seen) == len(report.tensors) >= 20
    assert [s["alive"] for s in seen] == [0, 0]


@pytest.mark.mlx
def test_gguf_converts_each_mlx_tensor_once_and_alone(tmp_path, monkeypatch):
    """A bfloat16 MLX model: each tensor is converted to numpy (float32) once, when written, never while
    another's copy is alive; the header's types and sizes come from the stored shapes."""
    seen = track(monkeypatch, export_weights, "to_numpy")
    report = case_export(tmp_path, "mlx-bf16", tmp_path / "m.gguf")
    assert seen == {"calls": len(report.tensors), "alive": 0}


@pytest.mark.parametrize("quantize", [{}, {"bits": 4, "group_size": 32}])
def test_gguf_traced_peak_is_a_few_tensors(tmp_path, quantize):
    """numpy backend, 32 decoder blocks: the memory Python traces during the export (numpy arrays
    included) peaks below 8 times the largest tensor in float32 (the embedding: 270 x 128), while the
    file alone is more than twice that bound (the former export held every encoded tensor: 29 times)."""
    folder = tiny_model_folder(tmp_path, seed=3, num_hidden_layers=32, vocab_size=270)
    model, tokenizer = mlx_slm.load(folder, backend="numpy", progress=False)
    if quantize:
        mlx_slm.quantize(model, progress=False, **quantize)
    mlx_slm.export_gguf(model, tokenizer, tmp_path / "warm.gguf")  # imports and one-time caches
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.gguf")
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    bound = 8 * 270 * 128 * 4
    assert peak < bound < (tmp_path / "m.gguf").stat().st_size / 2, (peak, bound)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
@pytest.mark.parametrize("settings", [{"bits": 4, "group_size": 32}, {"bits": 3, "group_size": 64},
                                      {"format": "lut", "bits": 4, "group_size": 8},
                                      {"format": "ternary", "bits": 2, "group_size": 64},
                                      {"format": "ternary_b3", "bits": 2, "group_size": 0}])
def test_views_filled_slice_by_slice_equal_whole_views(tmp_path, monkeypatch, backend, settings):
    """A quantized layer's view, filled from slices of a few rows (1000 weights; lut slices keep whole
    groups of rows sharing a palette), equals the format's view of the whole layer, array for array."""
    import numpy as np

    from mlx_slm.formats import get_format

    model, _ = tiny(tmp_path, backend=backend, **settings)
    monkeypatch.setattr(export_weights, "SLICE_WEIGHTS", 1000)
    weights = export_weights.ModelWeights(model)
    layers = [key for key in weights if weights.quantized(key)]
    assert len(layers) >= 14  # every linear layer (and the embedding where its 270 rows fit the format)
    for key in layers:
        mode, bits, group_size = weights.layers[key]
        stored = {s: None if a is None else export_weights.to_numpy(a) for s, a in weights.stored(key).items()}
        want, got = get_format(mode).view(stored, bits, group_size), weights[key]
        assert type(got) is type(want) and got.stored_bytes == want.stored_bytes, key
        for name, value in vars(want).items():
            if isinstance(value, np.ndarray):
                assert getattr(got, name).dtype == value.dtype, (key, name)
                np.testing.assert_array_equal(getattr(got, name), value, err_msg=f"{key}.{name}")
            else:
                assert getattr(got, name) == value, (key, name)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_core_ai_codes_packed_run_by_run_equal_one_packing(monkeypatch, bits):
    """Core AI's bit packing, run by run (runs of 8 codes here; 1M in the export), gives the bytes of one
    packing of every code (bit i * bits of the stream), for a code count that is not a multiple of 8."""
    import numpy as np

    from mlx_slm.export import coreai_weights

    codes = np.random.default_rng(0).integers(0, 1 << bits, (37, 9)).astype(np.uint8)
    planes = np.unpackbits(codes.reshape(-1, 1), axis=1, bitorder="little")[:, :bits]
    want = np.packbits(planes.reshape(-1), bitorder="little")
    monkeypatch.setattr(coreai_weights, "PACK_CODES", 8)
    np.testing.assert_array_equal(coreai_weights.pack_bits(codes, bits), want)
