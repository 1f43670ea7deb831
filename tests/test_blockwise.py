"""Block-wise reconstruction and the fake-quantization twins it trains (MLX)."""

import numpy as np
import pytest
from helpers import sample_text, tiny_model_folder

pytestmark = pytest.mark.mlx

FORMATS = [("affine", 2, 32), ("affine", 3, 32), ("affine", 4, 32), ("lut", 3, 8), ("lut", 2, 1),
           ("ternary", 2, 0), ("ternary_b3", 2, 32)]


def tiny_pair(root, fmt, bits, group_size, model_type="llama", method="rtn"):
    """(float teacher, quantized student, tokenizer, windows [16, 64]) on a tiny random model."""
    import mlx_slm
    from mlx_slm.data.windows import token_windows
    from mlx_slm.quantize import float_teacher

    model, tokenizer = mlx_slm.load(tiny_model_folder(root, model_type=model_type))
    teacher = float_teacher(model)
    calib = {} if method == "rtn" else {"calib": [sample_text(40)], "tokenizer": tokenizer, "num_samples": 6,
                                         "seq_len": 64}
    mlx_slm.quantize(model, bits=bits, group_size=group_size, format=fmt, method=method, progress=False, **calib)
    return teacher, model, tokenizer, token_windows(tokenizer, [sample_text(120)], 64, 16)


def parameters(model) -> dict:
    from mlx.utils import tree_flatten

    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


@pytest.mark.parametrize("fmt,bits,group_size", FORMATS)
def test_every_block_reconstructs_better(tmp_path, fmt, bits, group_size):
    from mlx_slm.quant.blockwise import BlockwiseConfig, reconstruct_blocks

    teacher, student, _, windows = tiny_pair(tmp_path, fmt, bits, group_size)
    before = parameters(student)
    report = reconstruct_blocks(student, teacher, windows, BlockwiseConfig(epochs=3), progress=False)
    assert report["trained_blocks"] == len(report["blocks"]) == 2
    for block in report["blocks"]:
        assert block["layers"] == 7 and not block["kept_start"]
        assert block["final_error"] < 0.99 * block["start_error"], block
    after = parameters(student)
    assert after.keys() == before.keys()
    assert all(after[k].dtype == before[k].dtype and after[k].shape == before[k].shape for k in before)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(".layers." in k for k in changed)  # embeddings, final norm, head untouched
    assert not any("norm" in k for k in changed)
    assert report["train_tokens"] == 14 * 64 * 3 and report["held_out_windows"] == 2
    assert report["final_kl"] < report["start_kl"] and not report["kept_start"]


def test_a_model_that_got_worse_keeps_its_start(tmp_path, monkeypatch):
    """Lower error in every block does not guarantee a better model: then the start comes back exactly."""
    from mlx_slm.quant import blockwise

    teacher, student, _, windows = tiny_pair(tmp_path, "affine", 2, 32)
    before = parameters(student)
    measured = iter([0.5, 0.6])  # the model's held-out KL before and after training
    monkeypatch.setattr(blockwise, "held_out_kl", lambda *args: next(measured))
    report = blockwise.reconstruct_blocks(student, teacher, windows, blockwise.BlockwiseConfig(epochs=1),
                                          progress=False)
    assert report["kept_start"] and report["improved_blocks"] == 2
    after = parameters(student)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    """With a checkpoint folder, a run stopped in its second block resumes there and ends bit for bit
    where an uninterrupted run ends; another run's folder is refused."""
    from mlx_slm.errors import SLMError
    from mlx_slm.quant import blockwise

    teacher, whole, _, windows = tiny_pair(tmp_path / "a", "affine", 2, 32)
    blockwise.reconstruct_blocks(whole, teacher, windows, blockwise.BlockwiseConfig(epochs=2), progress=False)
    config = blockwise.BlockwiseConfig(epochs=2, checkpoint=str(tmp_path / "ckpt"))
    _, stopped, _, _ = tiny_pair(tmp_path / "b", "affine", 2, 32)
    train_block, calls = blockwise.train_block, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_block(*args)

    monkeypatch.setattr(blockwise, "train_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        blockwise.reconstruct_blocks(stopped, teacher, windows, config, progress=False)
    monkeypatch.setattr(blockwise, "train_block", train_block)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["block-0000.json", "block-0000.safetensors",
                                                                     "run.json"]
    _, resumed, _, _ = tiny_pair(tmp_path / "c", "affine", 2, 32)
    report = blockwise.reconstruct_blocks(resumed, teacher, windows, config, progress=False)
    assert report["resumed_blocks"] == 1 and report["trained_blocks"] == 2
    expected = parameters(whole)
    for name, value in parameters(resumed).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    _, other, _, _ = tiny_pair(tmp_path / "d", "affine", 2, 32)
    with pytest.raises(SLMError, match="holds the blocks of another block-wise run"):
        blockwise.reconstruct_blocks(other, teacher, windows, blockwise.BlockwiseConfig(
            epochs=2, seed=1, checkpoint=str(tmp_path / "ckpt")), progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(SLMError, match="not empty and is not a block-wise checkpoint folder"):
        blockwise.reconstruct_blocks(other, teacher, windows, blockwise.BlockwiseConfig(
            checkpoint=str(tmp_path / "notes")), progress=False)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("fmt,bits,group_size", FORMATS)
def test_twin_rounds_as_the_format_stores(tmp_path, fmt, bits, group_size):
    """A twin reproduces its layer exactly; after random training steps, what it stores is what it computed."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from mlx_slm.quant.fake_quant import make_twin, store_twin
    from mlx_slm.runtime import dense_twin

    _, student, _, _ = tiny_pair(tmp_path, fmt, bits, group_size)
    layer = student.model.layers[0].mlp.down_proj
    twin = make_twin(layer)
    np.testing.assert_array_equal(np.array(twin.fake()), np.array(dense_twin(layer).weight))
    rng = np.random.default_rng(0)
    noisy = [(name, value * mx.array(1 + 0.3 * rng.standard_normal(value.shape).astype(np.float32)))
             for name, value in tree_flatten(twin.trainable_parameters())]
    twin.update(tree_unflatten(noisy))
    trained, codes = np.array(twin.fake()), twin.codes()
    store_twin(layer, twin)
    np.testing.assert_array_equal(np.array(dense_twin(layer).weight), trained)
    np.testing.assert_array_equal(make_twin(layer).codes(), codes)
    assert len(np.unique(codes)) > 1


@pytest.mark.parametrize("bits", [1, 3, 4])
def test_lut_twin_picks_the_nearest_palette_entry(bits):
    """The lut twin's nearest entry (counted against the sorted palette's midpoints) is the entry at the
    least distance, for unsorted palettes and weights on, between and beyond the entries."""
    from types import SimpleNamespace

    import mlx.core as mx

    from mlx_slm.quant.fake_quant import LutTwin

    rng = np.random.default_rng(bits)
    palettes = rng.standard_normal((24, 2**bits)).astype(np.float32)
    weights = np.concatenate([rng.standard_normal((24, 200)) * 2, palettes[:, rng.integers(0, 2**bits, 40)]],
                             axis=1).astype(np.float32)
    holder = SimpleNamespace(weight=mx.array(weights))  # nearest reads only the latent weights
    got = np.array(LutTwin.nearest(holder, mx.array(palettes)))
    np.testing.assert_array_equal(got, np.abs(weights[..., None] - palettes[:, None, :]).argmin(-1))


@pytest.mark.parametrize("fmt,bits,group_size", FORMATS)
def test_twin_adopts_the_float_weights_that_round_to_its_codes(tmp_path, fmt, bits, group_size):
    """Made with the float weight, a twin computes exactly what the layer stores, and its latent weights are
    the float weights wherever those round to the stored codes: every weight after rtn (the float weight
    decides its code), most of them after gptq (which moves some weights to other codes)."""
    import mlx.core as mx

    from mlx_slm.quant.fake_quant import make_twin
    from mlx_slm.runtime import dense_twin

    teacher, student, _, _ = tiny_pair(tmp_path, fmt, bits, group_size)
    for path in ("mlp.down_proj", "self_attn.q_proj"):
        layer, source = (dict(m.model.layers[0].named_modules())[path] for m in (student, teacher))
        twin = make_twin(layer, source.weight)
        np.testing.assert_array_equal(np.array(twin.fake()), np.array(dense_twin(layer).weight))
        np.testing.assert_array_equal(twin.codes(), make_twin(layer).codes())
        adopted = np.array(twin.weight) == np.array(twin.latent(source.weight.astype(mx.float32)))
        assert adopted.mean() > 0.999, (path, adopted.mean())
        assert twin.adopt(source.weight[:, :-1]) == 0.0  # another shape: nothing adopted
    if fmt == "affine":
        gptq_student = tiny_pair(tmp_path / "g", fmt, bits, group_size, method="gptq")[1]
        layer = gptq_student.model.layers[0].mlp.down_proj
        share = make_twin(layer).adopt(teacher.model.layers[0].mlp.down_proj.weight)
        assert 0.5 < share < 1.0, share


@pytest.mark.parametrize("fmt,bits,group_size", [("affine", 2, 32), ("affine", 4, 32), ("ternary", 2, 0)])
def test_gradients_hold_the_codes_for_step_sizes_and_pass_through_for_weights(tmp_path, fmt, bits, group_size):
    """For a loss sum(fake(w) * G): a scale's gradient is the sum of code * G over its group, a bias's
    the sum of G (codes held, not LSQ's code - (w - b) / s), and a latent weight's is G where it lies
    inside the format's range and 0 where it is clipped; all in the twin's units."""
    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_flatten

    from mlx_slm.quant.fake_quant import make_twin

    _, student, _, _ = tiny_pair(tmp_path, fmt, bits, group_size)
    twin = make_twin(student.model.layers[0].mlp.up_proj)
    twin.weight = twin.weight * 1.6  # some weights beyond the range
    rng = np.random.default_rng(1)
    g = rng.standard_normal(twin.weight.shape).astype(np.float32)
    grads = dict(tree_flatten(nn.value_and_grad(twin, lambda: (twin.fake() * mx.array(g)).sum())()[1]))
    rows, width = g.shape
    group = twin.group_size or width
    w = np.array(twin.weight * twin.unit).reshape(rows, -1, group)
    s = np.array(twin.stored_param("scales"))[..., None]
    if fmt == "ternary":
        b, low, high, codes = 0.0, -1, 1, twin.codes().astype(np.float32) - 1
    else:
        b, low, high, codes = np.array(twin.stored_param("biases"))[..., None], 0, 2**bits - 1, twin.codes()
    u = (w - b) / s
    inside = ((u > low - 0.5) & (u < high + 0.5)).reshape(rows, width)
    assert 0.01 < 1 - inside.mean() < 0.9  # both kinds present
    grouped = g.reshape(rows, -1, group)
    expected = {"weight": g * inside, "scales": (codes.reshape(rows, -1, group) * grouped).sum(-1)}
    if fmt == "affine":
        expected["biases"] = grouped.sum(-1)
    assert set(grads) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(np.array(grads[name]), value * twin.unit, rtol=1e-4, atol=1e-4 * twin.unit,
                                   err_msg=name)


def test_blockwise_quantize_saves_for_stock_mlx_lm(tmp_path):
    """method="blockwise": the affine result loads in stock mlx_lm bit for bit and beats its rtn start."""
    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load
    from test_learned import full_kl

    import mlx_slm

    folder = tiny_model_folder(tmp_path)
    teacher, tokenizer = mlx_slm.load(folder)
    text = [sample_text(120)]
    models = {}
    for method, options in (("rtn", None), ("blockwise", {"start": "rtn", "epochs": 3})):
        model, _ = mlx_slm.load(folder)
        mlx_slm.quantize(model, bits=2, group_size=32, method=method, calib=text, tokenizer=tokenizer,
                         num_samples=16, seq_len=64, progress=False, blockwise_options=options)
        models[method] = model
    record = mlx_slm.model_config(models["blockwise"])["mlx_slm"]
    assert record["method"] == "blockwise" and record["blockwise"]["start"] == "rtn"
    assert record["calibration"]["num_samples"] == 16
    from mlx_slm.data.windows import token_windows

    held = token_windows(tokenizer, [sample_text(40, seed=7)], 64, 4)
    assert full_kl(models["blockwise"], teacher, held) < 0.9 * full_kl(models["rtn"], teacher, held)
    out = mlx_slm.save(models["blockwise"], tokenizer, tmp_path / "bw")
    stock, _ = mlx_lm_load(str(out))
    assert parameters(stock).keys() == parameters(models["blockwise"]).keys()
    for name, value in parameters(models["blockwise"]).items():
        np.testing.assert_array_equal(parameters(stock)[name], value, err_msg=name)
    tokens = mx.array(held[:1])
    np.testing.assert_array_equal(np.array(stock(tokens)), np.array(models["blockwise"](tokens)))


@pytest.mark.parametrize("fmt,bits,group_size", [("lut", 3, 8), ("ternary", 2, 0)])
def test_lowbit_blockwise_round_trips(tmp_path, fmt, bits, group_size):
    import mlx_slm

    folder = tiny_model_folder(tmp_path)
    model, tokenizer = mlx_slm.load(folder)
    mlx_slm.quantize(model, bits=bits, group_size=group_size, format=fmt, method="blockwise",
                     calib=[sample_text(120)], tokenizer=tokenizer, num_samples=8, seq_len=64, progress=False,
                     blockwise_options={"epochs": 1})
    assert mlx_slm.model_config(model)["mlx_slm"]["blockwise"]["start"] == ("imatrix" if fmt == "lut" else "gptq")
    loaded, _ = mlx_slm.load(mlx_slm.save(model, tokenizer, tmp_path / "out"))
    saved, again = parameters(model), parameters(loaded)
    assert saved.keys() == again.keys()
    for name, value in saved.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_float_inputs_option_and_learned_polish(tmp_path):
    import mlx_slm

    folder = tiny_model_folder(tmp_path)
    model, tokenizer = mlx_slm.load(folder)
    mlx_slm.quantize(model, bits=3, group_size=32, method="learned", calib=[sample_text(120)], tokenizer=tokenizer,
                     num_samples=16, seq_len=64, progress=False,
                     learned_options={"start": "blockwise", "steps": 4, "eval_every": 2, "learning_rate": 1e-3},
                     blockwise_options={"start": "rtn", "epochs": 1, "inputs": "float"})
    record = mlx_slm.model_config(model)["mlx_slm"]
    assert record["method"] == "learned" and record["learned"]["start"] == "blockwise"
    assert record["blockwise"]["inputs"] == "float" and record["blockwise"]["trained_blocks"] == 2


@pytest.mark.parametrize("options,match", [
    ({"epochs": -1}, "epochs"), ({"inputs": "teacher"}, "inputs"), ({"learning_rate": 0}, "learning_rate"),
    ({"held_out": 1.0}, "held_out"), ({"start": "learned"}, "start"), ({"steps": 3}, "unknown blockwise"),
])
def test_bad_settings(tmp_path, options, match):
    import mlx_slm
    from mlx_slm.errors import SLMError

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    with pytest.raises(SLMError, match=match):
        mlx_slm.quantize(model, bits=2, method="blockwise", calib=[sample_text(20)], tokenizer=tokenizer,
                         num_samples=4, seq_len=32, blockwise_options=options, progress=False)
    assert not mlx_slm.model_config(model).get("quantization")


def test_gptq_start_refuses_lut(tmp_path):
    import mlx_slm
    from mlx_slm.errors import SLMError

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    with pytest.raises(SLMError, match="affine, ternary and ternary_b3 formats only"):
        mlx_slm.quantize(model, bits=3, group_size=8, format="lut", method="blockwise", calib=[sample_text(20)],
                         tokenizer=tokenizer, num_samples=4, seq_len=32, blockwise_options={"start": "gptq"},
                         progress=False)


def test_cli_blockwise(tmp_path, capsys):
    from mlx_slm.cli import main

    folder = tiny_model_folder(tmp_path)
    (tmp_path / "calib.txt").write_text(sample_text(120))
    argv = ["quantize", str(folder), "-o", str(tmp_path / "q2"), "--bits", "2", "--group-size", "32",
            "--method", "blockwise", "--calib", str(tmp_path / "calib.txt"), "--num-samples", "8",
            "--seq-len", "64", "--blockwise-epochs", "1", "--blockwise-start", "rtn"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "blockwise from rtn:" in out and "tokens trained" in out
    assert main(argv[:3] + [str(tmp_path / "q2b")] + argv[4:] + ["--blockwise-held-out", "1.5"]) == 2
    assert "held_out must be between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a choice the flag does not offer: argparse's own exit 2
        main(argv[:3] + [str(tmp_path / "q2b")] + argv[4:] + ["--blockwise-inputs", "nope"])
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(argv[:3] + [str(tmp_path / "q2b")] + argv[4:6] + ["--method", "gptq", "--blockwise-epochs", "1",
                                                              "--calib", str(tmp_path / "calib.txt")]) == 2
    assert "blockwise options are given, but method 'gptq' does not use them" in capsys.readouterr().err
    assert not (tmp_path / "q2b").exists()


def quantized_training_run(root, steps, **settings):
    """(teacher, 2-bit rtn student after ``steps`` of train_quantized distillation, history, windows)."""
    from mlx_slm.distill import DistillConfig, distill

    teacher, student, tokenizer, windows = tiny_pair(root, "affine", 2, 32)
    config = DistillConfig(steps=steps, batch_size=2, seq_len=32, learning_rate=1e-2, alpha=0.0, temperature=1.0,
                           train_quantized=True, **settings)
    history = distill(student, teacher, tokenizer, [sample_text(60)], config, progress=False)
    return teacher, student, history, windows


@pytest.mark.parametrize("adopt", [True, False])
def test_quantized_training_adopts_the_teachers_weights_unless_told_not_to(tmp_path, monkeypatch, adopt):
    from mlx_slm.distill import qat

    references = []
    real = qat.QuantizedTraining.__init__
    monkeypatch.setattr(qat.QuantizedTraining, "__init__",
                        lambda self, model, reference=None: (references.append(reference), real(self, model,
                                                                                                  reference))[1])
    teacher = quantized_training_run(tmp_path, 1, adopt=adopt)[0]
    assert references == [teacher if adopt else None]


def test_end_to_end_qat_trains_weights_and_step_sizes_in_the_format(tmp_path):
    from test_learned import full_kl

    from mlx_slm.runtime import quantized_modules

    teacher, start, _, windows = tiny_pair(tmp_path / "start", "affine", 2, 32)
    before = parameters(start)
    _, student, history, _ = quantized_training_run(tmp_path, 20)
    after = parameters(student)
    assert after.keys() == before.keys()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert {k.rsplit(".", 1)[-1] for k in changed} == {"weight", "scales", "biases"}
    assert all((".layers." in k or "embed_tokens" in k) and "norm" not in k for k in changed)
    assert {"model.embed_tokens.weight", "model.embed_tokens.scales"} <= changed  # the tied head trains too
    assert all(after[k].dtype == before[k].dtype for k in before)
    assert len(quantized_modules(student)) == len(quantized_modules(start))
    assert all(not m.trainable_parameters() for _, m in quantized_modules(student))  # frozen again, as loaded
    held = windows[-4:]
    assert full_kl(student, teacher, held) < 0.8 * full_kl(start, teacher, held)
    assert len(history) == 20


def test_end_to_end_qat_resume_is_exact(tmp_path, monkeypatch):
    import pytest as _pytest

    from mlx_slm.distill.trainer import Distiller

    settings = {"checkpoint_every": 2, "checkpoint_dir": str(tmp_path / "ckpt")}
    _, reference, _, _ = quantized_training_run(tmp_path / "a", 5, **settings)
    original_step = Distiller.step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original_step(self, step)

    settings["checkpoint_dir"] = str(tmp_path / "ckpt2")
    monkeypatch.setattr(Distiller, "step", interrupted)
    with _pytest.raises(KeyboardInterrupt):
        quantized_training_run(tmp_path / "b", 5, **settings)
    monkeypatch.setattr(Distiller, "step", original_step)
    from mlx_slm.distill import DistillConfig, distill

    teacher, student, tokenizer, _ = tiny_pair(tmp_path / "c", "affine", 2, 32)
    config = DistillConfig(steps=5, batch_size=2, seq_len=32, learning_rate=1e-2, alpha=0.0, temperature=1.0,
                           train_quantized=True, **settings)
    history = distill(student, teacher, tokenizer, [sample_text(60)], config, resume=True, progress=False)
    assert [r["step"] for r in history] == list(range(5))
    want = parameters(reference)
    for name, value in parameters(student).items():
        np.testing.assert_array_equal(value, want[name], err_msg=name)


def test_end_to_end_qat_needs_a_quantized_student(tmp_path):
    import mlx_slm
    from mlx_slm.distill import DistillConfig, distill
    from mlx_slm.errors import SLMError

    teacher, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    student, _ = mlx_slm.load(tiny_model_folder(tmp_path))
    with pytest.raises(SLMError, match="needs a quantized student"):
        distill(student, teacher, tokenizer, [sample_text(20)], DistillConfig(steps=1, seq_len=16,
                                                                               train_quantized=True), progress=False)
    with pytest.raises(SLMError, match="neither qat nor sparsity"):
        DistillConfig(train_quantized=True, qat={"format": "ternary"}).check()


@pytest.mark.slow
def test_blockwise_beats_gptq_at_2_bits_on_smollm2(smollm2_dir, english_text, tmp_path):
    """A short block-wise run from SmolLM2's 2-bit gptq start lowers KL on text it never saw."""
    from test_learned import full_kl

    import mlx_slm
    from mlx_slm.data.windows import calibration_windows, token_windows
    from mlx_slm.quant.blockwise import BlockwiseConfig, reconstruct_blocks

    text = english_text.read_text()
    cut = text.rfind("\n", 0, int(len(text) * 0.7))
    (tmp_path / "calib.txt").write_text(text[:cut])
    teacher, tokenizer = mlx_slm.load(smollm2_dir)
    student, _ = mlx_slm.load(smollm2_dir)
    calib = {"calib": tmp_path / "calib.txt", "tokenizer": tokenizer, "num_samples": 12, "seq_len": 128}
    mlx_slm.quantize(student, bits=2, group_size=64, method="gptq", progress=False, **calib)
    held = token_windows(tokenizer, [text[cut:]], 128, 4)
    start = full_kl(student, teacher, held)
    tokens, _ = calibration_windows(**calib)
    report = reconstruct_blocks(student, teacher, tokens, BlockwiseConfig(epochs=2, batch_size=2), progress=False)
    assert report["improved_blocks"] >= 20, report["improved_blocks"]
    assert full_kl(student, teacher, held) < 0.97 * start


def test_cli_end_to_end_qat(tmp_path, capsys):
    """quantize --method blockwise, then distill --train-quantized: the recipe as a user runs it."""
    import mlx_slm
    from mlx_slm.cli import main

    folder = tiny_model_folder(tmp_path)
    (tmp_path / "train.txt").write_text(sample_text(120))
    (tmp_path / "held.txt").write_text(sample_text(30, seed=5))
    assert main(["quantize", str(folder), "-o", str(tmp_path / "bw"), "--bits", "2", "--group-size", "32",
                 "--method", "blockwise", "--calib", str(tmp_path / "train.txt"), "--num-samples", "8",
                 "--seq-len", "64", "--blockwise-epochs", "1", "--blockwise-start", "rtn"]) == 0
    assert main(["distill", str(tmp_path / "bw"), "--teacher", str(folder), "--data", str(tmp_path / "train.txt"),
                 "-o", str(tmp_path / "qat"), "--train-quantized", "--steps", "4", "--batch-size", "2",
                 "--seq-len", "32", "--alpha", "0", "--temperature", "1", "--learning-rate", "1e-2",
                 "--eval-text", str(tmp_path / "held.txt"), "--eval-every", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 steps x 2 windows x 32 tokens = 256 tokens, the student's quantized layers" in out
    trained, _ = mlx_slm.load(tmp_path / "qat")
    start, _ = mlx_slm.load(tmp_path / "bw")
    assert mlx_slm.model_config(trained)["quantization"] == mlx_slm.model_config(start)["quantization"]
    changed = {k for k, v in parameters(start).items() if not np.array_equal(v, parameters(trained)[k])}
    assert changed and all(".layers." in k or "embed_tokens" in k for k in changed)


def test_end_to_end_qat_keeps_its_best_evaluation_and_stops_on_patience(tmp_path):
    """keep_best: the student ends as it was at its lowest held-out KL (re-measured after saving the
    twins back, it equals the trainer's best evaluation); patience stops the run early."""
    from test_learned import full_kl

    from mlx_slm.data.windows import token_windows
    from mlx_slm.distill import DistillConfig, distill
    from mlx_slm.errors import SLMError

    teacher, student, tokenizer, _ = tiny_pair(tmp_path, "affine", 2, 32)
    held_text = [sample_text(30, seed=5)]
    config = DistillConfig(steps=12, batch_size=2, seq_len=32, learning_rate=0.3, alpha=0.0, temperature=1.0,
                           train_quantized=True, eval_every=1, eval_windows=2, keep_best=True, patience=3)
    history = distill(student, teacher, tokenizer, [sample_text(60)], config, eval_text=held_text, progress=False)
    kls = [r["eval_kl"] for r in history]
    assert history[-1]["stopped_early"] and len(history) < 12  # lr 0.3 overshoots: three worse evaluations
    assert kls[-1] > min(kls) and kls.index(min(kls)) == len(kls) - 4
    windows = token_windows(tokenizer, held_text, 33, 2)[:, :-1]
    assert full_kl(student, teacher, windows) == pytest.approx(min(kls), rel=1e-3)
    with pytest.raises(SLMError, match="give eval_every"):
        DistillConfig(keep_best=True).check()
