"""Core ML export: the saved .mlpackage, run op by op by the numpy MIL interpreter in
coreml/, computes what the model computes; compressed layers keep the model's bits."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_model_folder

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.export import CoreMLOptions
from mlx_slm.export.coreml_weights import coreml_bytes, shift_scale_arrays
from mlx_slm.export.weights import ModelWeights
from mlx_slm.formats import affine
from mlx_slm.formats.views import AffineWeight, PalettizedWeight
from mlx_slm.model_access import set_model_config

ct = pytest.importorskip("coremltools")
from mlx_slm.coreml.mil_interpreter import (  # noqa: E402  (needs coremltools)
    MILInterpreter,
    UnsupportedOpError,
    causal_mask,
    chunk_lengths,
    chunked_calls,
    compare_greedy,
    dtype_name,
    load_program,
    masked_calls,
    zero_mask,
)

TINY_TOLERANCE = 0.03  # max |Δlogit|, fp16 program vs float32 numpy model; tiny logits span about ±4
SMOLLM2_TOLERANCE = 0.35  # SmolLM2-135M logits span about ±35; measured 0.13 (fp16) and 0.10 (4-bit)
PROMPT = [5, 9, 100, 7, 30, 61]
# compute_precision="float32" vs the float32 numpy model: (max |Δlogit|, how many times smaller than the
# float16 program's). Float weights: the package's fp16 KV-cache states set the floor (measured 0.0012 vs
# 0.0050). Affine weights: the fp16 rounding of scales and offsets dominates (measured 0.0058 vs 0.0072).
FLOAT32_EXPECTED = {"llama-fp16": (0.002, 3.0), "qwen3-q4g32": (0.007, 1.1)}


def weight_blob(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"


def constexpr_dtypes(package: Path) -> dict:
    """Weight op name -> (op type, stored element type) as read back from the saved program."""
    found = {}
    for op in load_program(package).operations:
        if op.op_type == "constexpr_blockwise_shift_scale":
            found[op.name] = (op.op_type, dtype_name(op.inputs["data"]))
        elif op.op_type == "constexpr_lut_to_dense":
            found[op.name] = (op.op_type, dtype_name(op.inputs["indices"]))
        elif op.op_type == "const" and op.outputs[0].val is not None and np.ndim(op.outputs[0].val) == 2:
            found[op.name] = (op.op_type, dtype_name(op.outputs[0]))
    return found


def tiny_model(tmp_path, model_type="llama", bits=None, overrides=None, **options):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, model_type, **(overrides or {})), backend="numpy")
    if bits is not None:
        mlx_slm.quantize(model, bits=bits, progress=False, **options)
    return model, tokenizer


CASES = {  # model type, bits, quantize options, config overrides
    "llama-fp16": ("llama", None, {}, {}),
    "qwen3-q4g32": ("qwen3", 4, {"group_size": 32}, {}),
    "qwen2-q8": ("qwen2", 8, {}, {}),
    "llama-q3": ("llama", 3, {}, {}),
    "llama-q2": ("llama", 2, {}, {}),
    "mistral-q5-mixed": ("mistral", 5, {"config": {"by_type": {"down_proj": {"bits": 6}},
                                                   "by_name": {"model.embed_tokens": "fp16"}}}, {}),
    "llama3-rope-untied-q4": ("llama", 4, {}, {"tie_word_embeddings": False, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}),
    "llama-lut4-row-scales": ("llama", 4, {"format": "lut", "group_size": 4}, {}),
    "qwen3-lut3-per-row": ("qwen3", 3, {"format": "lut", "group_size": 1}, {}),
    "llama-lut2": ("llama", 2, {"format": "lut", "group_size": 8, "per_row_scale": False}, {}),
    "llama-ternary": ("llama", 2, {"format": "ternary", "group_size": 0}, {}),
    "qwen2-ternary-b3-g32": ("qwen2", 2, {"format": "ternary_b3", "group_size": 32}, {}),
}
EXPECTED_STORAGE = {2: ("constexpr_lut_to_dense", "uint2"), 3: ("constexpr_lut_to_dense", "uint3"),
                    4: ("constexpr_blockwise_shift_scale", "uint4"), 5: ("constexpr_blockwise_shift_scale", "uint8"),
                    6: ("constexpr_blockwise_shift_scale", "uint8"), 8: ("constexpr_blockwise_shift_scale", "uint8"),
                    None: ("const", "fp16")}


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_package_matches_model(case, tmp_path):
    model_type, bits, options, overrides = CASES[case]
    model, tokenizer = tiny_model(tmp_path, model_type, bits, overrides, **options)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32)

    package_tokens, model_tokens, delta = compare_greedy(MILInterpreter(package), model, PROMPT, steps=8)
    assert package_tokens == model_tokens
    assert delta < TINY_TOLERANCE

    # every matrix is stored in the Core ML type its bits map to (read back from the saved program)
    stored = constexpr_dtypes(package)
    weights = dict(ModelWeights(model))
    for layer in json.loads(package.with_suffix(".json").read_text())["layers"]:
        weight = weights.get(layer["name"], weights.get(f"{layer['name']}.weight"))
        op_name = layer["name"].replace(".", "_")
        if isinstance(weight, PalettizedWeight):
            expected = ("constexpr_lut_to_dense", f"uint{weight.bits}")
            assert layer["format"] == options["format"]
            if weight.mode == "lut" and weight.row_scales is None:  # the model's codes and palettes, byte for byte
                assert coreml_bytes(weight) == weight.stored_bytes
            elif weight.mode == "lut":  # the model's codes and one fp16 palette per row (row scales folded in)
                palettes = weight.shape[0] * (2 << weight.bits)
                assert coreml_bytes(weight) == weight.codes.size * weight.bits // 8 + palettes
            else:  # 2-bit codes and a 4-entry fp16 table [-s, 0, s, 0] per scale
                assert coreml_bytes(weight) == weight.codes.size // 4 + weight.lut.size * 2
        else:
            expected = EXPECTED_STORAGE[weight.bits if isinstance(weight, AffineWeight) else None]
        assert stored[op_name] == expected, layer["name"]
        assert (layer["coreml_op"], layer["storage"]) == expected
        if isinstance(weight, AffineWeight) and weight.bits in (4, 8):
            assert coreml_bytes(weight) == weight.stored_bytes  # same bits, scales and offsets as the model

    # the blob holds those bytes and little else: norms, biases, RoPE tables, 64-byte entry headers
    small = sum(v.size * 2 for v in weights.values() if isinstance(v, np.ndarray) and v.ndim == 1)
    rope = 2 * 32 * model.head_dim * 2
    expected_bytes = sum(coreml_bytes(w) for w in weights.values()
                         if isinstance(w, (AffineWeight, PalettizedWeight)) or w.ndim == 2) + small + rope
    entries = len(stored) + 3 * len(weights)
    assert expected_bytes <= weight_blob(package).stat().st_size <= expected_bytes + 128 * entries


@pytest.mark.parametrize("case", ["llama-fp16", "qwen3-q4g32"])
def test_float32_compute_agrees_more_tightly(case, tmp_path):
    """compute_precision="float32": fp32 activations and logits, the same stored weights and fp16 states."""
    model_type, bits, options, overrides = CASES[case]
    model, tokenizer = tiny_model(tmp_path, model_type, bits, overrides, **options)
    deltas, blobs, stored = {}, {}, {}
    for precision in ("float16", "float32"):
        package = mlx_slm.export_coreml(model, tokenizer, tmp_path / precision / "Tiny.mlpackage", max_context=32,
                                        compute_precision=precision)
        package_tokens, model_tokens, deltas[precision] = compare_greedy(MILInterpreter(package), model, PROMPT, 8)
        assert package_tokens == model_tokens
        blobs[precision] = weight_blob(package).stat().st_size
        stored[precision] = {name: kind for name, kind in constexpr_dtypes(package).items()
                             if not name.startswith("rope_")}
        logits_type = ct.utils.load_spec(str(package)).description.output[0].type.multiArrayType.dataType
        assert logits_type == {"float16": ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16,
                               "float32": ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32}[precision]
    print(f"\n{case}: max |dlogit| float16 {deltas['float16']:.5f}, float32 {deltas['float32']:.5f}")
    assert deltas["float16"] < TINY_TOLERANCE
    tolerance, factor = FLOAT32_EXPECTED[case]
    assert deltas["float32"] < tolerance and deltas["float32"] * factor < deltas["float16"]
    # every matrix stored as in the float16 package: the RoPE tables and norm vectors double (+4 KB, +1.3 KB),
    # the linears' zero biases go; folding an fp32 copy of even the smallest matrix (64 x 128) adds 16 KB
    assert stored["float32"] == stored["float16"]
    assert 0 < blobs["float32"] - blobs["float16"] < 8192


# swift-transformers' LanguageModelWithStatefulKVCache (Sources/Models/LanguageModel.swift): prefill sends
# inputIds [1, N] with a zero causalMask [1, 1, 1, N + 1], each later step the newest token [1, 1] with a zero
# causalMask [1, 1, 1, S + 1] (S = tokens so far, that one included): zero_mask(T, past) makes exactly those.
SWIFT_TRANSFORMERS_PROMPTS = [[5], [5, 9], [5, 9, 100, 7, 30], [*PROMPT, 11, 42, 88, 150]]


@pytest.mark.parametrize("case", ["llama-fp16", "qwen3-q4g32"])
def test_swift_transformers_requests_give_the_models_logits(case, tmp_path):
    """Prompts of 1, 2, 5 and 10 tokens, then 6 greedy steps, as swift-transformers sends them: every logit of
    every position (so causality holds inside the prompt although the mask is all zeros) within the tiny
    tolerance, same greedy tokens."""
    model_type, bits, options, overrides = CASES[case]
    model, tokenizer = tiny_model(tmp_path, model_type, bits, overrides, **options)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32)
    interpreter = MILInterpreter(package)
    for prompt in SWIFT_TRANSFORMERS_PROMPTS:
        package_tokens, model_tokens, delta = compare_greedy(interpreter, model, prompt, steps=6, mask=zero_mask)
        assert package_tokens == model_tokens, prompt
        assert delta < TINY_TOLERANCE, (prompt, delta)


def test_prompt_in_chunks_with_either_mask(tmp_path):
    """T > 1 after a filled cache (a chat's next turn): chunks of 3, 4 and 2 tokens, with zero masks and with
    full causal masks, give the model's logits."""
    model, tokenizer = tiny_model(tmp_path, "llama", 4)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32)
    interpreter = MILInterpreter(package)
    chunks = [[5, 9, 100], [7, 30, 61, 11], [42, 88]]
    for mask in (zero_mask, causal_mask):
        interpreter.reset()
        cache, past = model.make_cache(), 0
        for chunk in chunks:
            ids = np.array([chunk], np.int32)
            ours = interpreter.predict({"inputIds": ids, "causalMask": mask(len(chunk), past)})["logits"]
            assert np.abs(ours.astype(np.float32) - model(ids, cache)).max() < TINY_TOLERANCE
            past += len(chunk)


def test_contract_shapes_and_metadata(tmp_path):
    """The inputs' ranges admit swift-transformers' masks (last dim up to max_context + 1); the metadata carries
    co.huggingface.exporters.name, which swift-transformers' LanguageModel.modelName reads."""
    folder = tiny_model_folder(tmp_path / "hub" / "models--HuggingFaceTB--SmolTiny" / "snapshots" / "abc", "llama")
    model, tokenizer = mlx_slm.load(folder, backend="numpy")
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "a" / "Tiny.mlpackage", max_context=24)
    spec = ct.utils.load_spec(str(package))
    ranges = {i.name: [(r.lowerBound, r.upperBound) for r in i.type.multiArrayType.shapeRange.sizeRanges]
              for i in spec.description.input}
    assert ranges == {"inputIds": [(1, 1), (1, 24)], "causalMask": [(1, 1), (1, 1), (1, 24), (2, 25)]}
    assert dict(spec.description.metadata.userDefined)["co.huggingface.exporters.name"] == "HuggingFaceTB/SmolTiny"

    named = mlx_slm.export_coreml(model, tokenizer, tmp_path / "b" / "Tiny.mlpackage", max_context=24, name="me/x")
    assert ct.utils.load_spec(str(named)).description.metadata.userDefined["co.huggingface.exporters.name"] == "me/x"
    plain, _ = tiny_model(tmp_path, "llama")
    unnamed = mlx_slm.export_coreml(plain, tokenizer, tmp_path / "c" / "Plain.mlpackage", max_context=24)
    assert ct.utils.load_spec(str(unnamed)).description.metadata.userDefined[
        "co.huggingface.exporters.name"] == "Plain"


ENUMERATED = CoreMLOptions(shapes="enumerated", query_lengths=(1, 4), logits="last")
# op -> inputs whose values (not shapes) decide its output's shape
SHAPE_ARGUMENTS = {"slice_by_index": ("begin", "end"), "range_1d": ("start", "end", "step"), "reshape": ("shape",),
                   "tile": ("reps",), "fill": ("shape",)}


def value_shaped_ops(package: Path) -> list:
    """Ops of the saved program whose output shape follows a computed value (a non-const shape argument)."""
    return sorted({op.op_type for op in load_program(package).operations if any(
        op.inputs.get(name) is not None and op.inputs[name].op is not None and op.inputs[name].op.op_type != "const"
        for name in SHAPE_ARGUMENTS.get(op.op_type, ()))})


@pytest.mark.parametrize("case", ["llama-fp16", "qwen3-q4g32", "llama-ternary"])
def test_enumerated_package_matches_model(case, tmp_path):
    """shapes="enumerated", query lengths 1 and 4, last-position logits: prompts of 1, 2, 5 and 10 tokens fed in
    chunks (10 = 4 + 4 + 1 + 1), then 6 greedy steps of one token: the model's last-position logits within the tiny
    tolerance, the same greedy tokens; a length that is not enumerated is refused as Core ML would."""
    model_type, bits, options, overrides = CASES[case]
    model, tokenizer = tiny_model(tmp_path, model_type, bits, overrides, **options)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32,
                                    options=ENUMERATED)
    interpreter = MILInterpreter(package)
    assert chunk_lengths(10, (1, 4)) == [4, 4, 1, 1]
    for prompt in SWIFT_TRANSFORMERS_PROMPTS:
        package_tokens, model_tokens, delta = compare_greedy(interpreter, model, prompt, steps=6,
                                                             feed=chunked_calls((1, 4)))
        assert package_tokens == model_tokens, prompt
        assert delta < TINY_TOLERANCE, (prompt, delta)
    with pytest.raises(ValueError, match=r"does not accept the shapes of \['inputIds \(1, 3\)'\]"):
        interpreter.predict({"inputIds": np.zeros((1, 3), np.int32), "position": np.array([0], np.int32)})


@pytest.mark.parametrize("shapes", ["ranged", "enumerated"])
def test_last_position_logits_are_the_full_programs_last_row(shapes, tmp_path):
    """logits="last" returns [1, 1, vocab] holding exactly the last row of the logits="all" program's output, call
    after call (the 10-token prompt in chunks of 4 and 1 when enumerated, then 4 single tokens)."""
    model, tokenizer = tiny_model(tmp_path, "qwen3", 4, group_size=32)
    lengths = (1, 4) if shapes == "enumerated" else None
    interpreters = {logits: MILInterpreter(mlx_slm.export_coreml(
        model, tokenizer, tmp_path / logits / "Tiny.mlpackage", max_context=32,
        options=CoreMLOptions(shapes=shapes, query_lengths=lengths, logits=logits))) for logits in ("all", "last")}
    feed = chunked_calls(lengths) if lengths else masked_calls(zero_mask)
    tokens, past = SWIFT_TRANSFORMERS_PROMPTS[-1], 0
    for call in [tokens, [3], [4], [250], [17]]:
        ids = np.array([call], np.int32)
        full, last = (feed(interpreters[logits], ids, past) for logits in ("all", "last"))
        assert last.shape == (1, 1, full.shape[2]) and full.shape[1] == (len(call) if lengths is None else 1)
        np.testing.assert_array_equal(last[0, 0], full[0, -1])
        past += len(call)


def test_enumerated_contract_from_the_saved_spec(tmp_path):
    """Read back from the saved package: inputIds enumerated [1, 1] / [1, 4] and position [1] fixed, no causalMask;
    logits [1, 1, vocab] fixed; only the cache writes take value-dependent positions (slice_update: its output is
    the state's shape), where the ranged program's shapes follow values (range_1d, slice_by_index). The manifest
    records each package's shapes, logits and the compute units they suit."""
    model, tokenizer = tiny_model(tmp_path, "llama", 4)
    ranged = mlx_slm.export_coreml(model, tokenizer, tmp_path / "r" / "Tiny.mlpackage", max_context=24)
    enumerated = mlx_slm.export_coreml(model, tokenizer, tmp_path / "e" / "Tiny.mlpackage", max_context=24,
                                       options=ENUMERATED)
    spec = ct.utils.load_spec(str(enumerated))
    inputs = {i.name: i.type.multiArrayType for i in spec.description.input}
    assert list(inputs) == ["inputIds", "position"]
    assert [list(s.shape) for s in inputs["inputIds"].enumeratedShapes.shapes] == [[1, 1], [1, 4]]
    assert list(inputs["position"].shape) == [1] and inputs["position"].WhichOneof("ShapeFlexibility") is None
    assert list(spec.description.output[0].type.multiArrayType.shape) == [1, 1, 263]
    assert value_shaped_ops(enumerated) == []
    assert {op.op_type for op in load_program(enumerated).operations} >= {"slice_update", "cumsum"}
    assert value_shaped_ops(ranged) == ["range_1d", "slice_by_index"]

    manifests = {kind: json.loads(package.with_suffix(".json").read_text())
                 for kind, package in (("ranged", ranged), ("enumerated", enumerated))}
    assert {key: manifests["ranged"][key] for key in ("input_shapes", "query_lengths", "logits", "compute_units")} == {
        "input_shapes": "ranged", "query_lengths": None, "logits": "all", "compute_units": "cpuAndGPU"}
    assert {key: manifests["enumerated"][key] for key in ("input_shapes", "query_lengths", "logits",
                                                          "compute_units")} == {
        "input_shapes": "enumerated", "query_lengths": [1, 4], "logits": "last", "compute_units": "cpuAndNeuralEngine"}

    # one fixed length is a fixed shape; the default lengths are 1 and 64 (or max_context if smaller)
    fixed = mlx_slm.export_coreml(model, tokenizer, tmp_path / "f" / "Tiny.mlpackage", max_context=24,
                                  options=CoreMLOptions(shapes="enumerated", query_lengths=(1,)))
    ids = ct.utils.load_spec(str(fixed)).description.input[0].type.multiArrayType
    assert list(ids.shape) == [1, 1] and ids.WhichOneof("ShapeFlexibility") is None
    assert CoreMLOptions(shapes="enumerated").check(2048).query_lengths == (1, 64)
    assert CoreMLOptions(shapes="enumerated").check(24).query_lengths == (1, 24)


@pytest.mark.parametrize(("options", "message"), [
    (CoreMLOptions(shapes="fixed"), r"shapes must be one of \('ranged', 'enumerated'\), not 'fixed'"),
    (CoreMLOptions(logits="first"), r"logits must be one of \('all', 'last'\), not 'first'"),
    (CoreMLOptions(query_lengths=(1, 8)), r"query_lengths are for shapes='enumerated'"),
    (CoreMLOptions(shapes="enumerated", query_lengths=(8, 16)), r"must include 1 .* within max_context 16"),
    (CoreMLOptions(shapes="enumerated", query_lengths=(1, 32)), r"\(1, 32\) must include 1 .* max_context 16"),
    (CoreMLOptions(shapes="enumerated", query_lengths=(1, 2.5)), r"query_lengths must be integers"),
])
def test_bad_options_give_one_clear_error_and_no_output(options, message, tmp_path):
    model, tokenizer = tiny_model(tmp_path, "llama")
    out = tmp_path / "out" / "Bad.mlpackage"
    with pytest.raises(SLMError, match=message):
        mlx_slm.export_coreml(model, tokenizer, out, max_context=16, options=options)
    assert not out.parent.exists()


def test_shift_scale_reproduces_affine_groups_even_constant_ones():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 128)).astype(np.float16)
    w[1, 64:] = 3.0  # a constant group: MLX gives it a ~1e-7 scale, so -bias/scale overflows fp16
    packed, scales, biases = affine.pack(w, bits=4, group_size=64)
    weight = affine_weight(packed, scales, biases)
    scale, offset = shift_scale_arrays(weight)
    decompressed = np.repeat(scale.astype(np.float32), 64, 1) * (weight.codes - np.repeat(offset, 64, 1))
    dense = affine.unpack(packed, scales, biases, bits=4, group_size=64, dtype=np.float32)
    assert np.abs(decompressed - dense).max() < 2e-3 and decompressed[1, 64:].tolist() == [3.0] * 64


# 4/8-bit affine layers: fraction of weights whose decoded fp16 value is the model's weight rounded to fp16.
# Measured: tiny qwen3 q4g32 0.73, tiny qwen2 q8 (g64) 0.78; SmolLM2-135M q4g64 0.693, q4g32 0.70 (see README).
BIT_EQUAL_AT_LEAST = {4: 0.65, 8: 0.30}


@pytest.mark.parametrize("case", ["qwen3-q4g32", "qwen2-q8"])
def test_affine_decode_error_is_bounded_by_the_offset_rounding(case, tmp_path):
    """The saved package's shift-scale weights vs scale * q + bias: off by at most scale * ulp(offset) / 2 (the fp16
    offset's rounding) plus half an fp16 ulp of the result (its own rounding), and mostly bit-equal."""
    model_type, bits, options, overrides = CASES[case]
    model, tokenizer = tiny_model(tmp_path, model_type, bits, overrides, **options)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32)
    constants = MILInterpreter(package).constants
    equal = total = 0
    for path, weight in dict(ModelWeights(model)).items():
        if not isinstance(weight, AffineWeight):
            continue
        rows, columns = weight.shape
        groups = (rows, columns // weight.group_size, weight.group_size)
        scale, offset = shift_scale_arrays(weight)
        exact = (weight.scales.astype(np.float64)[..., None] * weight.codes.reshape(groups)
                 + weight.biases.astype(np.float64)[..., None])
        decoded = constants[path.removesuffix(".weight").replace(".", "_")].reshape(groups).astype(np.float16)
        bound = (np.abs(scale.astype(np.float64)) * np.spacing(np.abs(offset)).astype(np.float64) / 2)[..., None]
        bound = bound + np.spacing(np.abs(decoded)).astype(np.float64) / 2
        assert (np.abs(decoded - exact) <= bound * (1 + 2**-20)).all(), path
        equal += int((decoded == exact.astype(np.float16)).sum())
        total += decoded.size
    print(f"\n{case}: {equal / total:.3f} of the weights bit-equal to the model's fp16 weight")
    assert equal / total > BIT_EQUAL_AT_LEAST[bits]


@pytest.mark.parametrize("case", ["llama-lut4-row-scales", "qwen3-lut3-per-row", "llama-lut2"])
def test_lut_layers_are_single_lookups_decoding_the_models_weights(case, tmp_path):
    """Read from the saved program: each lut layer is one constexpr_lut_to_dense over const codes and palettes,
    and no constexpr op reads a lookup's result (the lut -> shift-scale order coremltools rewrites for targets
    before iOS 26); the decoded matrix is the model's weight (row scale x palette entry) rounded to fp16, bit
    for bit."""
    model_type, bits, options, overrides = CASES[case]
    model, tokenizer = tiny_model(tmp_path, model_type, bits, overrides, **options)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32)
    interpreter = MILInterpreter(package)
    ops = {op.outputs[0].name: op for op in interpreter.operations}
    for op in ops.values():
        if op.op_type == "constexpr_lut_to_dense":
            assert {child.op_type for child in op.outputs[0].child_ops}.isdisjoint(
                {"constexpr_blockwise_shift_scale", "constexpr_lut_to_dense"}), op.name
    checked = 0
    for path, weight in dict(ModelWeights(model)).items():
        if not isinstance(weight, PalettizedWeight):
            continue
        name = path.removesuffix(".weight").replace(".", "_")
        op = ops[name]
        assert op.op_type == "constexpr_lut_to_dense"
        assert {op.inputs["indices"].op.op_type, op.inputs["lut"].op.op_type} == {"const"}
        rows = weight.shape[0]
        dense = weight.lut[np.arange(rows) // (rows // weight.lut.shape[0]), 0][np.arange(rows)[:, None], weight.codes]
        if weight.row_scales is not None:
            dense = dense.astype(np.float32) * weight.row_scales.astype(np.float32)
        np.testing.assert_array_equal(interpreter.constants[name].astype(np.float16), dense.astype(np.float16))
        checked += 1
    assert checked >= 7


def affine_weight(packed, scales, biases) -> AffineWeight:
    return AffineWeight(codes=affine.unpack_codes(packed, 4), scales=scales.astype(np.float32),
                        biases=biases.astype(np.float32), bits=4, group_size=64, stored_bytes=0)


def test_manifest_tokenizer_and_layout(tmp_path):
    model, tokenizer = tiny_model(tmp_path, "llama", 4)
    out = tmp_path / "apps" / "SmolTiny.mlpackage"
    mlx_slm.export_coreml(model, tokenizer, out, max_context=48)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "SmolTiny.json", "SmolTiny.mlpackage", "tokenizer.json", "tokenizer_config.json"]
    manifest = json.loads((out.parent / "SmolTiny.json").read_text())
    assert manifest["max_context"] == 48 and manifest["mlx_slm_version"] == mlx_slm.__version__
    assert (manifest["bos_token_id"], manifest["eos_token_id"], manifest["pad_token_id"]) == (1, 2, 0)
    assert "chat_template" in manifest
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    assert layers["model.layers.0.mlp.down_proj"]["bits"] == 4
    assert layers["model.layers.0.mlp.down_proj"]["group_size"] == 64

    spec = ct.utils.load_spec(str(out))
    assert [i.name for i in spec.description.input] == ["inputIds", "causalMask"]
    assert sorted(s.name for s in spec.description.state) == ["keyCache", "valueCache"]
    assert [o.name for o in spec.description.output] == ["logits"]
    key_cache = next(s for s in spec.description.state if s.name == "keyCache")
    assert list(key_cache.type.stateType.arrayType.shape) == [2, 2, 48, 32]  # layers, KV heads, context, head dim

    with pytest.raises(SLMError, match="already exists"):
        mlx_slm.export_coreml(model, tokenizer, out, max_context=48)
    mlx_slm.export_coreml(model, tokenizer, out, max_context=16, overwrite=True)
    assert json.loads((out.parent / "SmolTiny.json").read_text())["max_context"] == 16


def test_bad_requests_give_one_clear_error_and_no_output(tmp_path):
    model, tokenizer = tiny_model(tmp_path, "llama")
    out = tmp_path / "out" / "Bad.mlpackage"
    with pytest.raises(SLMError, match="beyond the model's max_position_embeddings 512"):
        mlx_slm.export_coreml(model, tokenizer, out, max_context=1024)
    with pytest.raises(SLMError, match=r"must end in \.mlpackage"):
        mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Bad.model", max_context=16)
    config = mlx_slm.model_config(model)
    set_model_config(model, {**config, "model_type": "phi3"})
    with pytest.raises(SLMError, match=r"Llama family \(llama, mistral, qwen2, qwen3, smollm\) and Gemma 3 "
                                       r"\(gemma3_text, gemma3\), not model type 'phi3'"):
        mlx_slm.export_coreml(model, tokenizer, out, max_context=16)
    set_model_config(model, config)
    with pytest.raises(SLMError, match=r"compute_precision must be one of \('float16', 'float32'\), not 'int8'"):
        mlx_slm.export_coreml(model, tokenizer, out, max_context=16, compute_precision="int8")

    quantized, _ = tiny_model(tmp_path / "q", "llama", 4)
    config = mlx_slm.model_config(quantized)
    set_model_config(quantized, {**config, "quantization": {**config["quantization"], "mode": "mxfp4"}})
    with pytest.raises(SLMError, match="unknown weight format 'mxfp4'"):
        mlx_slm.export_coreml(quantized, tokenizer, out, max_context=16)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_an_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    model, tokenizer = tiny_model(tmp_path, "llama")

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "save_pretrained", fail)
    with pytest.raises(KeyboardInterrupt):
        mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Cut.mlpackage", max_context=16)
    assert list((tmp_path / "out").iterdir()) == []


def test_interpreter_refuses_unknown_ops(tmp_path):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec((2, 3))], opset_version=ct.target.iOS18)
    def program(x):
        return mb.erf(x=x)

    package = tmp_path / "Erf.mlpackage"
    ct.convert(program, minimum_deployment_target=ct.target.iOS18, skip_model_load=True).save(str(package))
    with pytest.raises(UnsupportedOpError, match="erf"):
        MILInterpreter(package)


def test_import_mlx_slm_does_not_import_coremltools():
    code = "import sys, mlx_slm; mlx_slm.export_coreml; assert 'coremltools' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode == 0


def test_cli_export_coreml(tmp_path, capsys):
    from mlx_slm.cli import main

    folder = tiny_model_folder(tmp_path, "qwen3")
    assert main(["export", "coreml", str(folder), "-o", str(tmp_path / "o" / "Q.mlpackage"),
                 "--max-context", "32", "--backend", "numpy", "--compute-precision", "float32"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "o" / "Q.json").is_file()
    logits = ct.utils.load_spec(str(tmp_path / "o" / "Q.mlpackage")).description.output[0]
    assert logits.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert main(["export", "coreml", str(folder), "-o", str(tmp_path / "o2" / "Q.mlpackage"),
                 "--max-context", "100000", "--backend", "numpy"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "max_position_embeddings" in error
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "coreml", "--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--max-context" in help_text and "--compute-precision" in help_text
    assert all(flag in help_text for flag in ("--shapes", "--query-lengths", "--logits"))


def test_cli_export_coreml_shape_options(tmp_path, capsys):
    """--shapes enumerated --query-lengths 1,8 --logits last: the package and manifest say so; a bad combination
    or a malformed list is one line on stderr and exit status 2."""
    from mlx_slm.cli import main

    folder = tiny_model_folder(tmp_path, "llama")
    out = tmp_path / "o" / "E.mlpackage"
    assert main(["export", "coreml", str(folder), "-o", str(out), "--max-context", "32", "--backend", "numpy",
                 "--shapes", "enumerated", "--query-lengths", "8,1", "--logits", "last"]) == 0
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert (manifest["query_lengths"], manifest["logits"], manifest["compute_units"]) == ([1, 8], "last",
                                                                                        "cpuAndNeuralEngine")
    ids = ct.utils.load_spec(str(out)).description.input[0].type.multiArrayType
    assert [list(s.shape) for s in ids.enumeratedShapes.shapes] == [[1, 1], [1, 8]]
    capsys.readouterr()
    assert main(["export", "coreml", str(folder), "-o", str(tmp_path / "b" / "E.mlpackage"), "--backend", "numpy",
                 "--query-lengths", "1,8"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "query_lengths are for shapes='enumerated'" in error
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "coreml", str(folder), "-o", str(tmp_path / "b" / "E.mlpackage"), "--query-lengths", "1,x"])
    assert exit_info.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.mlx
def test_mlx_model_exports_the_same_program(tmp_path):
    import mlx.core as mx

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, "llama"), backend="mlx")
    mlx_slm.quantize(model, bits=4, group_size=32, progress=False)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "m" / "M.mlpackage", max_context=16)
    prompt = np.array([PROMPT], np.int32)
    ours = MILInterpreter(package).predict({"inputIds": prompt, "causalMask": causal_mask(len(PROMPT), 0)})
    theirs = np.array(model(mx.array(prompt)).astype(mx.float32))
    assert np.abs(ours["logits"].astype(np.float32) - theirs).max() < TINY_TOLERANCE
    assert (ours["logits"][0].argmax(-1) == theirs[0].argmax(-1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("bits", [None, 4])
def test_smollm2_package_matches_model(bits, smollm2_dir, tmp_path):
    """SmolLM2-135M, fp16 and 4-bit g64: prefill + 16 greedy steps through the saved package."""
    model, tokenizer = mlx_slm.load(smollm2_dir, backend="numpy")
    if bits:
        mlx_slm.quantize(model, bits=bits, group_size=64, progress=False)
    start = time.perf_counter()
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "SmolLM2.mlpackage", max_context=64)
    seconds = time.perf_counter() - start
    prompt = tokenizer.encode("The capital of France is")
    package_tokens, model_tokens, delta = compare_greedy(MILInterpreter(package), model, prompt, steps=16)
    blob = weight_blob(package).stat().st_size
    print(f"\nSmolLM2 {bits or 16}-bit: package {blob / 1e6:.1f} MB, export {seconds:.1f} s, "
          f"max |dlogit| {delta:.3f}, tokens {package_tokens}")
    assert package_tokens == model_tokens
    assert delta < SMOLLM2_TOLERANCE
    # the model's own bytes (codes, scales, biases, fp16 norms) + the RoPE tables, within 0.3%
    # (each blob entry has a 64-byte header and 64-byte alignment: ~0.2% for 4-bit SmolLM2's 900 arrays)
    rope = 2 * 64 * model.head_dim * 2
    assert blob == pytest.approx(mlx_slm.stats.weight_stats(model)["size_bytes"] + rope, rel=3e-3)


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML runs models only on macOS (coremltools cannot "
                                                      "predict on Linux)")
def test_core_ml_prediction_on_a_mac(tmp_path):
    model, tokenizer = tiny_model(tmp_path, "qwen3", 4, group_size=32)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32)
    mlmodel = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
    state = mlmodel.make_state()
    interpreter = MILInterpreter(package)
    past = 0
    for tokens in (PROMPT, [3], [4]):
        inputs = {"inputIds": np.array([tokens], np.int32), "causalMask": causal_mask(len(tokens), past)}
        expected = interpreter.predict(inputs)["logits"].astype(np.float32)
        actual = mlmodel.predict(inputs, state=state)["logits"].astype(np.float32)
        assert np.abs(actual - expected).max() < TINY_TOLERANCE
        past += len(tokens)


@pytest.mark.parametrize("case", ["qwen3-q4g32", "llama-lut4-row-scales", "llama-ternary"])
def test_get_weights_metadata_shows_the_compressed_layers(case, tmp_path):
    """coremltools' own reader of the saved package sees codes feeding constexpr ops, never a dense fp16 matrix."""
    from coremltools.optimize.coreml import get_weights_metadata

    model_type, bits, options, overrides = CASES[case]
    model, tokenizer = tiny_model(tmp_path, model_type, bits, overrides, **options)
    package = mlx_slm.export_coreml(model, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32)
    # (a threshold under ~100 elements makes coremltools 9.0 trip over the small constants that feed concat)
    metadata = get_weights_metadata(ct.models.MLModel(str(package), skip_model_load=True), weight_threshold=100)
    weights = dict(ModelWeights(model))
    checked = 0
    for path, weight in weights.items():
        if not isinstance(weight, (AffineWeight, PalettizedWeight)):
            continue
        prefix = path.replace(".", "_")
        entries = {name[len(prefix) + 1:]: value for name, value in metadata.items() if name.startswith(prefix + "_")}
        assert prefix not in metadata  # no dense copy of the matrix
        consumers = {c.op_type for value in entries.values() for c in value.child_ops}
        if isinstance(weight, AffineWeight):
            codes = entries["data_0"].val
            assert consumers == {"constexpr_blockwise_shift_scale"}
        else:
            codes = entries[next(k for k in entries if k.endswith("indices_0"))].val
            lut = entries[next(k for k in entries if k.endswith("lut_0"))].val
            assert "constexpr_lut_to_dense" in consumers and lut.shape[-2:] == (1 << weight.bits, 1)
            # the model's palettes; per-row ones where row scales are folded in
            assert lut.shape[0] == (weight.lut.shape[0] if weight.row_scales is None else weight.shape[0])
        np.testing.assert_array_equal(codes, weight.codes)
        checked += 1
    assert checked >= 7
