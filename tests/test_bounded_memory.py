"""Bounded memory at scale: shared float32 input statistics, the numpy engine's float32 cache budget,
and benchmarks/scale.py's streamed synthetic model (issue 27)."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import sample_text, tiny_config, tiny_model_folder, tiny_weights

from mlx_slm.calib.statistics import InputStatistics
from mlx_slm.errors import SLMError
from mlx_slm.formats import affine
from mlx_slm.io import safetensors_np
from mlx_slm.models.numpy_llama import NumpyLlama

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from scale import parameter_count, run_step, step_commands, tensor_shapes, write_safetensors

LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
          "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
          "model.layers.0.mlp.down_proj"]


def observed(batches=3, seed=0):
    config = tiny_config()
    engine = NumpyLlama(config, tiny_weights(config, seed))
    stats = InputStatistics(LAYERS, gram=True)
    inputs = {}

    def observer(name, x):
        inputs.setdefault(name, []).append(x.reshape(-1, x.shape[-1]).astype(np.float64))
        stats(name, x)

    engine.observer = observer
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        engine.block(0, engine.embed(rng.integers(0, config["vocab_size"], (2, 16))))
    return stats, inputs


def test_layers_reading_one_input_share_one_float32_sum_equal_to_float64_statistics():
    stats, inputs = observed()
    q, k, v, o, gate, up, down = LAYERS
    assert stats.sums[q] is stats.sums[k] is stats.sums[v] and stats.sums[gate] is stats.sums[up]
    assert len({id(stats.sums[name]) for name in LAYERS}) == 4  # qkv, o, gate/up, down
    for name in LAYERS:
        x = np.concatenate(inputs[name])
        expected = x.T @ x / len(x)
        hessian = stats.hessian(name)
        assert hessian.dtype == np.float32
        np.testing.assert_allclose(hessian, expected, rtol=0, atol=2e-6 * np.abs(expected).max())
        np.testing.assert_allclose(stats.importance(name), np.diag(expected), rtol=1e-5)
    assert stats.hessian(q) is stats.hessian(k)  # the mean is taken in place, once


def test_rescale_changes_each_shared_sum_once():
    stats, inputs = observed(batches=1)
    q, k, v = LAYERS[:3]
    s = np.linspace(0.5, 2.0, stats.hessian(q).shape[0])
    before_h, before_i = stats.hessian(q).astype(np.float64), stats.importance(q)
    stats.rescale([q, k, v], s)
    np.testing.assert_allclose(stats.hessian(v), before_h / np.outer(s, s), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.importance(k), before_i / s**2, rtol=1e-12)


def test_layers_that_stop_sharing_their_inputs_fail_clearly():
    stats = InputStatistics(["a", "b"], gram=False)
    x, y = np.ones((4, 8), np.float32), np.full((4, 8), 2, np.float32)
    stats("a", x)
    stats("b", x)
    stats("a", y)
    with pytest.raises(SLMError, match="no longer sees the inputs"):
        stats("b", x + 1)


@pytest.mark.parametrize("budget", [0, 40_000, 1 << 30])
def test_float32_cache_budget_changes_no_logit_and_is_never_exceeded(budget):
    config = tiny_config(num_hidden_layers=3)
    weights = tiny_weights(config, 1)
    for name in [n for n in weights if n.endswith("proj.weight")]:
        q, scales, biases = affine.quantize_codes(weights[name], 4, 32)
        path = name[: -len(".weight")]
        weights.update({name: affine.pack_codes(q, 4), f"{path}.scales": scales, f"{path}.biases": biases})
    config["quantization"] = {"group_size": 32, "bits": 4}
    tokens = np.arange(24).reshape(2, 12) % config["vocab_size"]
    expected = NumpyLlama(config, dict(weights))(tokens)
    engine = NumpyLlama(config, weights)
    engine.cache_bytes = budget
    dequantized, dense = [], engine.dense
    engine.dense = lambda name: dequantized.append(name) or dense(name)
    engine.materialize()
    assert sorted(dequantized) == sorted(engine.dense_names())  # nothing beyond the budget is built
    engine.dense = dense
    cached = sum(engine.dense(name).nbytes for name in engine.dense_names())
    assert cached <= budget
    if budget == 0:
        assert engine.dense_names() == []
    np.testing.assert_array_equal(engine(tokens), expected)
    assert sum(engine.dense(name).nbytes for name in engine.dense_names()) <= budget


def test_scale_benchmark_streams_a_readable_bfloat16_model(tmp_path):
    config = {**tiny_config(), "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    shapes = tensor_shapes(config)
    assert parameter_count(config) == sum(int(np.prod(shape)) for shape in shapes.values())
    write_safetensors(tmp_path / "model.safetensors", shapes, seed=3)
    weights = safetensors_np.load(tmp_path / "model.safetensors")
    assert {name: tuple(array.shape) for name, array in weights.items()} == shapes
    matrix = np.asarray(weights["model.layers.1.mlp.down_proj.weight"], np.float32)
    assert abs(matrix.std() - 0.02) < 1e-3 and abs(matrix.mean()) < 1e-3
    np.testing.assert_array_equal(np.asarray(weights["model.norm.weight"], np.float32), 1.0)


def test_every_scale_benchmark_step_is_a_command_the_cli_parses(tmp_path):
    """Each step's argv parses as its own subcommand with the options it names (a renamed flag fails here,
    not two hours into a benchmark)."""
    from mlx_slm.cli import build_parser

    steps = step_commands(tmp_path / "model", tmp_path / "work", 8)
    assert {"rtn", "gptq", "awq", "imatrix", "sparsegpt", "eval", "coreml", "coreai", "gguf"} <= set(steps)
    for step, (argv, _) in steps.items():
        args = build_parser().parse_args(argv)
        assert args.command == argv[0], step
        if step in ("gptq", "awq", "imatrix", "sparsegpt"):
            assert (args.method, args.num_samples) == (step, 8)
    assert build_parser().parse_args(steps["sparsegpt"][0]).sparsity == 0.5


def test_a_scale_step_records_its_resources_and_the_heap_setting_it_ran_with(tmp_path):
    """The step's own peak: a child's wait4 maximum starts at its parent's peak (here 400 MB held by the
    test), its VmHWM does not."""
    from mlx_slm import _heap

    held = np.ones(400 << 20, np.uint8)
    measured = run_step(["--help"], tmp_path / "help.log")
    assert 10 << 20 < measured["peak_rss"] < held.nbytes and measured["wall_s"] > 0 and measured["cpu_s"] > 0
    assert measured["peak_from"] == ("VmHWM" if sys.platform == "linux" else "wait4")
    assert measured["heap"] == _heap.describe()  # the step's environment is this process's
    assert "usage: mlx-slm" in (tmp_path / "help.log").read_text()


@pytest.mark.parametrize("weight_format,bits,group_size", [("affine", 4, 32), ("lut", 3, 8), ("ternary", 2, 0)])
def test_layers_beyond_the_cache_compute_in_row_slices_with_the_same_logits(tmp_path, monkeypatch, weight_format,
                                                                          bits, group_size):
    """With no cache, every layer (the 264-row tied embedding and head included) is dequantized in
    slices of at most ROWS_PER_SLICE rows (rounded to whole lut palettes): logits equal the cached run's."""
    import mlx_slm
    from mlx_slm.formats import get_format
    from mlx_slm.models import numpy_llama

    model, _ = mlx_slm.load(tiny_model_folder(tmp_path, "llama", seed=2, vocab_size=264), backend="numpy")
    mlx_slm.quantize(model, bits=bits, group_size=group_size, format=weight_format, progress=False)
    assert model.stored("model.embed_tokens") is not None
    tokens = np.array([[5, 262, 7, 100, 5, 41], [0, 1, 2, 255, 130, 64]])
    expected = model(tokens)
    fresh = numpy_llama.NumpyLlama(model.config, dict(model.weights))
    fresh.cache_bytes = 0
    monkeypatch.setattr(numpy_llama, "ROWS_PER_SLICE", 36)
    unpack, widest = get_format(weight_format).unpack, []

    def counting_unpack(*args, **kwargs):
        out = unpack(*args, **kwargs)
        widest.append(out.shape[0])
        return out

    counted = replace(get_format(weight_format), unpack=counting_unpack)
    monkeypatch.setattr(numpy_llama, "get_format", lambda mode: counted)
    got = fresh(tokens)
    assert fresh.dense_names() == [] and max(widest) <= 40 and len(widest) > fresh.num_layers * 7
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("step", ["prune", "quantize"])
def test_a_numpy_model_gives_back_the_file_pages_of_every_tensor_it_replaces(tmp_path, monkeypatch, step):
    """Pruning (new float weights) and quantizing (codes in place of the float weight) a model read on
    the numpy backend release each replaced tensor's memory-mapped pages, so the old model's pages do
    not add up beside the new arrays; the results are those of a run that keeps the pages."""
    import mlx_slm
    from mlx_slm.prune.unstructured import prune

    folder = tiny_model_folder(tmp_path)

    def run(spy: bool):
        model, _ = mlx_slm.load(folder, backend="numpy", progress=False)
        old = dict(model.weights)
        released = []
        real = safetensors_np.release
        if spy:
            monkeypatch.setattr(safetensors_np, "release", lambda a: (released.append(a), real(a)))
        if step == "prune":
            prune(model, method="magnitude", sparsity=0.5, progress=False)
        else:
            mlx_slm.quantize(model, bits=4, group_size=32)
        monkeypatch.setattr(safetensors_np, "release", real)
        return model, old, released

    model, old, released = run(spy=True)
    replaced = [name for name in old if model.weights[name] is not old[name]]
    assert len(replaced) >= 7  # a block's linears at least
    assert all(safetensors_np.mapping(old[name])[0] is not None for name in replaced)
    assert {id(a) for a in released} >= {id(old[name]) for name in replaced}
    unspied, _, _ = run(spy=False)
    for name, value in model.weights.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(unspied.weights[name]), err_msg=name)


def test_writing_a_numpy_models_layer_drops_only_that_layers_float32_copy(tmp_path):
    """A pass that writes one block at a time (pruning) keeps the other layers' float32 copies; the
    written layer computes with its new weights, as a model read afresh with them does."""
    import mlx_slm
    from mlx_slm.model_access import access

    model, _ = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy", progress=False)
    tokens = np.arange(12).reshape(1, 12) % 50
    model(tokens)  # fills the float32 cache
    cached = set(model.dense_names())
    written = "model.layers.0.mlp.down_proj"
    assert written in cached and len(cached) > 2
    new = np.asarray(model.weights[f"{written}.weight"]) * np.asarray(0.5, model.weights[f"{written}.weight"].dtype)
    access(model).write({f"{written}.weight": new})
    assert set(model.dense_names()) == cached - {written}
    reference = NumpyLlama(model.config, {**model.weights})
    np.testing.assert_array_equal(model(tokens), reference(tokens))


BIG = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_key_value_heads": 4,
       "head_dim": 64}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Model folders: "tiny"; "big", 200 MB of float16 (24 layers of 4M weights, each tensor at most 2 MB);
    "few", big's widths with 2 layers."""
    root = tmp_path_factory.mktemp("models")
    return {"tiny": tiny_model_folder(root),
            "big": tiny_model_folder(root, seed=1, num_hidden_layers=24, **BIG),
            "few": tiny_model_folder(root, seed=2, num_hidden_layers=2, **BIG)}


CALIBRATED = ["--num-samples", "4", "--seq-len", "32"]


@pytest.mark.parametrize("step,base", [
    (["convert"], "tiny"), (["prune", "--method", "magnitude", "--sparsity", "0.5"], "tiny"),
    (["quantize", "--method", "gptq", "--bits", "8", "--group-size", "64", *CALIBRATED], "few")])
def test_convert_prune_and_quantize_hold_about_a_layer_not_the_model(tmp_path, monkeypatch, model_files, step,
                                                                    base):
    """``mlx-slm convert`` (read lazily; each array freed once written, or its file pages given back),
    ``prune`` (each pruned block kept in a temporary file until the save) and a calibrated ``quantize``
    (each block's codes so kept; at 8 bits over half the file): peak RSS over the same command's on a
    smaller model stays under 40% of the 200 MB model's file (before, convert and prune held all of it
    and more, quantize all its codes). quantize's smaller model has the big one's widths and 2 of its
    24 layers, so its working set (Gram matrices, the search's temporaries) is the same and only what
    grows with the layers shows. The steps run with glibc's own heap (``MLX_SLM_HEAP=system``): with freed
    memory kept, where the search threads' freed blocks land varies from run to run, and so did the
    2-layer run's peak, by tens of MB.
    convert writes the input's tensors bit for bit; prune and quantize write what they give in memory."""
    import mlx_slm
    from mlx_slm.prune.unstructured import prune

    monkeypatch.setenv("MLX_SLM_HEAP", "system")
    big = model_files["big"]
    size = (big / "model.safetensors").stat().st_size
    assert size > 180 << 20
    if step[0] == "quantize":
        text = tmp_path / "calib.txt"
        text.write_text(sample_text())
        step = [*step, "--calib", str(text)]
    smaller = run_step([step[0], str(model_files[base]), "-o", str(tmp_path / "small-out"), *step[1:]],
                       tmp_path / "small.log")
    measured = run_step([step[0], str(big), "-o", str(tmp_path / "big-out"), *step[1:]], tmp_path / "big.log")
    assert measured["peak_rss"] - smaller["peak_rss"] < 0.4 * size
    written = safetensors_np.load(tmp_path / "big-out" / "model.safetensors")
    if step[0] == "convert":
        expected = safetensors_np.load(big / "model.safetensors")
    elif step[0] == "prune":
        model, _ = mlx_slm.load(big, backend="numpy", progress=False)
        expected = prune(model, method="magnitude", sparsity=0.5, progress=False).weights
    else:
        model, tokenizer = mlx_slm.load(big, backend="numpy", progress=False)
        expected = mlx_slm.quantize(model, bits=8, group_size=64, method="gptq", calib=str(text),
                                    tokenizer=tokenizer, num_samples=4, seq_len=32, progress=False).weights
    assert written.keys() == expected.keys()
    for name, value in expected.items():
        assert written[name].dtype == value.dtype and np.array_equal(written[name], value), name
