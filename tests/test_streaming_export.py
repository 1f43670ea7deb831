"""Exports write their files one tensor at a time: the bytes are those the whole-file writer wrote, and
no more than one converted or encoded tensor is alive at any moment."""

import dataclasses
import os
import tracemalloc
import weakref

import numpy as np
import pytest
from helpers import tiny_model_folder
from test_gguf_export import tiny
from test_kquant_export import CALIBRATION, kquant_model

import mlx_slm
from mlx_slm.data.windows import Calibration
from mlx_slm.export import cli as export_cli
from mlx_slm.export import gguf as gguf_export
from mlx_slm.export import weights as export_weights
from mlx_slm.export.gguf_tensors import Encoded
from mlx_slm.io import safetensors_np

AFFINE_MIX = {"bits": 4, "group_size": 32, "config": {"by_type": {"down_proj": {"bits": 8}, "v_proj": {"bits": 5}},
                                                      "by_name": {"model.layers.1.mlp.up_proj": "fp16"}}}
CASES = {  # name: (backend, model settings, export keywords)
    "f16-llama": ("numpy", {}, {}),
    "bf16-llama-untied": ("numpy", {"tied": False}, {"types": "bf16"}),
    "q8_0-qwen2": ("numpy", {"model_type": "qwen2"}, {"types": "q8_0"}),
    "f32-qwen3-untied": ("numpy", {"model_type": "qwen3", "tied": False}, {"types": "f32"}),
    "affine-mix": ("numpy", AFFINE_MIX, {}),
    "affine-mix-requantize-f16": ("numpy", AFFINE_MIX, {"types": {"requantize": "f16"}}),
    "lut4": ("numpy", {"format": "lut", "bits": 4, "group_size": 8}, {}),
    "q4_k_m-untied": ("kquant", {"tied": False}, {"kquant": "q4_k_m"}),
    "q3_k_m-calibrated": ("kquant", {}, {"kquant": "q3_k_m", "calibration": (16, 64)}),
    "mlx-bf16": ("mlx", {}, {"types": "f16"}),
    "mlx-affine-mix": ("mlx", AFFINE_MIX, {}),
}


def case_export(tmp_path, case, path):
    """Build the case's model and export it to ``path``; returns the report."""
    backend, settings, keywords = CASES[case]
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


@pytest.mark.parametrize("case", cases())
def test_gguf_bytes_do_not_depend_on_the_slices(tmp_path, monkeypatch, case):
    """A file streamed in slices of a few rows (1000 weights: 7 rows of 128, 3 of 256, 1 of 512; Q/K
    permuted rows included) is byte for byte the file streamed a whole tensor at a time: float, exact
    Q4_1/Q5_1, requantized, dequantized lut and k-quant tensors, tied and untied heads, both backends.
    (The whole-tensor file's contents are checked against the model by tests/test_gguf_export.py and
    test_kquant_export.py; when streaming replaced the writer that held every tensor, each case was
    compared with that writer's file, byte for byte.)"""
    case_export(tmp_path, case, tmp_path / "whole.gguf")
    monkeypatch.setattr(export_weights, "SLICE_WEIGHTS", 1000)
    case_export(tmp_path / "sliced", case, tmp_path / "sliced.gguf")
    assert (tmp_path / "sliced.gguf").read_bytes() == (tmp_path / "whole.gguf").read_bytes()


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


@pytest.mark.parametrize("settings", [{"bits": 3, "group_size": 64}, {"format": "lut", "bits": 4, "group_size": 8},
                                      {"format": "ternary", "bits": 2, "group_size": 64}])
def test_row_views_equal_the_whole_views_rows(tmp_path, settings):
    """``ModelWeights.rows(key, index)`` holds the whole view's rows ``index`` (codes, dense weight); a lut
    view taken by rows has one palette per row, so its group size is 1 (the whole view's is 8)."""
    import numpy as np

    from mlx_slm.export.gguf_tensors import dense

    model, _ = tiny(tmp_path, **settings)
    weights = export_weights.ModelWeights(model)
    index = np.array([5, 0, 17, 16, 63, 9])
    for key in (k for k in weights if weights.quantized(k)):
        whole, part = weights[key], weights.rows(key, index)
        np.testing.assert_array_equal(part.codes, whole.codes[index], err_msg=key)
        np.testing.assert_array_equal(dense(part), dense(whole)[index], err_msg=key)
        shared = settings.get("format") == "lut"
        assert (part.group_size, whole.group_size) == ((1, 8) if shared else (whole.group_size,) * 2), key


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


def file_pages_kb() -> int:
    """This process's resident file-backed memory (kB), from Linux's /proc/self/status."""
    return int(open("/proc/self/status").read().split("RssFile:")[1].split()[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's RssFile")
def test_release_unmaps_a_loaded_tensors_pages_and_keeps_its_values(tmp_path):
    values = np.arange(1 << 21, dtype=np.float32).reshape(512, -1)  # 8 MiB
    safetensors_np.save(tmp_path / "a.safetensors", {"a": values, "b": np.ones(3, np.float16)})
    tensors = safetensors_np.load(tmp_path / "a.safetensors")
    before = file_pages_kb()
    assert float(tensors["a"].sum(dtype=np.float64)) == float(values.sum(dtype=np.float64))
    touched = file_pages_kb()
    assert touched - before >= 7 * 1024
    safetensors_np.release(tensors["a"][10:20])  # a view of a few rows: about its pages only
    assert touched - file_pages_kb() <= values[10:20].nbytes // 1024 + 8  # its 160 kB and the pages at its ends
    safetensors_np.release(tensors["a"])
    assert touched - file_pages_kb() >= 7 * 1024
    np.testing.assert_array_equal(tensors["a"], values)  # read back from the file
    np.testing.assert_array_equal(tensors["b"], np.ones(3, np.float16))
    assert safetensors_np.mapping(values)[0] is None and safetensors_np.mapping(tensors["a"].copy())[0] is None
    first, end = safetensors_np.mapping(tensors["a"][1:2])[1:]
    assert end - first == values[1:2].nbytes


def test_model_weights_release_every_mapped_tensor_and_hand_out_none(tmp_path, monkeypatch):
    model, tokenizer = tiny(tmp_path, bits=4, group_size=32)
    folder = mlx_slm.save(model, tokenizer, tmp_path / "q4")
    model, _ = mlx_slm.load(folder, backend="numpy", progress=False)
    released = []
    real = safetensors_np.release
    monkeypatch.setattr(safetensors_np, "release", lambda a: (released.append(safetensors_np.mapping(a)), real(a)))
    weights = export_weights.ModelWeights(model)
    for key in weights:
        value = weights[key]
        arrays = [value] if isinstance(value, np.ndarray) else [getattr(value, f.name) for f in
                                                                  dataclasses.fields(value)]
        assert all(safetensors_np.mapping(a)[0] is None for a in arrays if isinstance(a, np.ndarray)), key
    covered = {}
    for mapped, first, end in released:
        covered.setdefault(id(mapped), []).append((first, end))
    for name, array in model.weights.items():
        mapped, first, end = safetensors_np.mapping(array)
        assert mapped is not None, name  # every tensor of the saved model is mapped
        spans = sorted(s for s in covered[id(mapped)] if s[1] > first and s[0] < end)
        reached = first
        for start, stop in spans:
            assert start <= reached, name
            reached = max(reached, stop)
        assert reached >= end, name


def test_exports_read_llama_folders_on_the_numpy_backend(tmp_path):
    folder = tiny_model_folder(tmp_path)
    assert export_cli.reading_backend(str(folder), None) == "numpy"
    assert export_cli.reading_backend(str(folder), "mlx") == "mlx"
    other = tmp_path / "gemma"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gemma3_text"}')
    assert export_cli.reading_backend(str(other), None) is None  # mlx-lm's class runs it
    assert export_cli.reading_backend(str(tmp_path / "missing"), None) is None  # load's own error follows


@pytest.mark.mlx
def test_exports_write_the_same_bytes_from_either_backend(tmp_path):
    """The exports now read Llama-family folders on the numpy backend by default: what they write is what
    the MLX backend's model gives: weights, programs, manifests, GGUF (the packages' own descriptions aside:
    Core ML's Manifest.json names its entries by random ids and its model.mlmodel's metadata varied between
    runs, Core AI's metadata.json holds the time it was written)."""
    from mlx_slm.cli import main

    assert main(["quantize", str(tiny_model_folder(tmp_path)), "-o", str(tmp_path / "q4"), "--bits", "4",
                 "--group-size", "32"]) == 0
    for target, suffix in (("coreml", ".mlpackage"), ("coreai", ".aimodel"), ("gguf", ".gguf")):
        for backend in ("mlx", "numpy"):
            out = tmp_path / backend / target
            out.mkdir(parents=True)
            assert main(["export", target, str(tmp_path / "q4"), "-o", str(out / f"M{suffix}"),
                         "--backend", backend]) == 0
    files = [p.relative_to(tmp_path / "mlx") for p in (tmp_path / "mlx").rglob("*") if p.is_file()]
    assert len(files) >= 9
    for name in files:
        if name.name not in ("Manifest.json", "metadata.json", "model.mlmodel"):
            assert (tmp_path / "mlx" / name).read_bytes() == (tmp_path / "numpy" / name).read_bytes(), name
