"""Distillation: losses against hand computation, training behaviour, resume, data parallelism."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import sample_text, tiny_model_folder

pytestmark = pytest.mark.mlx
HERE = Path(__file__).resolve().parent


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kl(log_p, log_q):
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def reference_divergence(teacher, student, kind, skew):
    lt, ls = np_log_softmax(teacher), np_log_softmax(student)
    pt, ps = np.exp(lt), np.exp(ls)
    if kind == "forward":
        return np_kl(lt, ls)
    if kind == "reverse":
        return np_kl(ls, lt)
    mix = np.log(skew * pt + (1 - skew) * ps)
    if kind == "skew":
        return np_kl(lt, mix)
    return skew * np_kl(lt, mix) + (1 - skew) * np_kl(ls, mix)


@pytest.mark.parametrize("kind", ["forward", "reverse", "skew", "jsd"])
def test_kd_loss_matches_hand_computation(kind):
    import mlx.core as mx

    from mlx_slm.distill.losses import kd_loss

    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 5, 11)) * 2, rng.normal(size=(2, 5, 11)) * 2
    targets = rng.integers(0, 11, (2, 5))
    mask = np.ones((2, 5))
    mask[1, 3:] = 0
    alpha, temperature, skew = 0.3, 2.5, 0.2
    loss, parts = kd_loss(mx.array(student, dtype=mx.float32), mx.array(targets), mx.array(mask),
                          mx.array(teacher, dtype=mx.float32), alpha=alpha, temperature=temperature, kind=kind,
                          skew=skew)
    ce = -np.take_along_axis(np_log_softmax(student), targets[..., None], -1)[..., 0]
    kd = reference_divergence(teacher / temperature, student / temperature, kind, skew)
    want_ce, want_kd = (ce * mask).sum() / mask.sum(), (kd * mask).sum() / mask.sum()
    assert parts["ce"].item() == pytest.approx(want_ce, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(want_kd, rel=1e-4, abs=1e-7)
    assert loss.item() == pytest.approx(alpha * want_ce + (1 - alpha) * temperature**2 * want_kd, rel=1e-5)


def test_top_k_loss_renormalizes_on_the_teacher_support():
    import mlx.core as mx

    from mlx_slm.distill.losses import kd_loss
    from mlx_slm.distill.teacher import top_k_logits

    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(1, 4, 9)), rng.normal(size=(1, 4, 9))
    targets, mask = mx.zeros((1, 4), mx.int32), mx.ones((1, 4))
    s, t = mx.array(student, dtype=mx.float32), mx.array(teacher, dtype=mx.float32)
    full = kd_loss(s, targets, mask, t, alpha=0.0, temperature=1.0)[0].item()
    values, indices = map(mx.array, top_k_logits(teacher.astype(np.float32), 9))
    assert kd_loss(s, targets, mask, values, indices, alpha=0.0, temperature=1.0)[0].item() == pytest.approx(full,
                                                                                                          rel=1e-5)
    values, indices = map(mx.array, top_k_logits(teacher.astype(np.float32), 3))
    idx = np.array(indices)
    assert np.all(np.sort(np.array(values), -1)[..., ::-1] == np.array(values))
    got = kd_loss(s, targets, mask, values, indices, alpha=0.0, temperature=1.0)[0].item()
    want = np_kl(np_log_softmax(np.take_along_axis(teacher, idx, -1)),
                 np_log_softmax(np.take_along_axis(student, idx, -1))).mean()
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_loss_with_the_tail_is_the_kl_of_k_plus_one_outcomes(temperature):
    """teacher_lse: the k tokens plus one outcome for all the others, for both models; k = V is the full KL."""
    import mlx.core as mx

    from mlx_slm.distill.losses import kd_loss
    from mlx_slm.distill.teacher import top_k_logits

    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(2, 3, 11)) * 2, rng.normal(size=(2, 3, 11)) * 2
    targets, mask = mx.zeros((2, 3), mx.int32), mx.ones((2, 3))
    s, t = mx.array(student, dtype=mx.float32), mx.array(teacher, dtype=mx.float32)
    lse = mx.logsumexp(t / temperature, axis=-1)
    full = kd_loss(s, targets, mask, t, alpha=0.0, temperature=temperature)[1]["kd"].item()
    values, indices = map(mx.array, top_k_logits(teacher.astype(np.float32), 11))
    every = kd_loss(s, targets, mask, values, indices, 0.0, temperature, teacher_lse=lse)[1]["kd"].item()
    assert every == pytest.approx(full, rel=1e-4)
    values, indices = map(mx.array, top_k_logits(teacher.astype(np.float32), 4))
    idx = np.array(indices)
    log_t, log_s = np_log_softmax(teacher / temperature), np_log_softmax(student / temperature)

    def coarse(log_p):
        top = np.take_along_axis(log_p, idx, -1)
        return np.concatenate([top, np.log(1 - np.exp(top).sum(-1, keepdims=True))], -1)

    want = np_kl(coarse(log_t), coarse(log_s)).mean()
    got = kd_loss(s, targets, mask, values, indices, 0.0, temperature, teacher_lse=lse)[1]["kd"].item()
    assert got == pytest.approx(want, rel=1e-4)
    renormalized = kd_loss(s, targets, mask, values, indices, 0.0, temperature)[1]["kd"].item()
    assert abs(got - renormalized) > 1e-3  # the tail changes the loss


def test_feature_loss_is_normalized_mse():
    import mlx.core as mx

    from mlx_slm.distill.losses import feature_loss

    h_s, h_t = np.ones((1, 2, 3)), np.full((1, 2, 3), 2.0)
    assert feature_loss([mx.array(h_s)], [mx.array(h_t)], [None]).item() == pytest.approx(6 / 24)


@pytest.fixture
def pair(tmp_path):
    import mlx_slm

    teacher, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, seed=0))
    student, _ = mlx_slm.load(tiny_model_folder(tmp_path, seed=1))
    return teacher, student, tokenizer, tmp_path


def parameters(model) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}


def held_out_kl(student, teacher, tokenizer) -> float:
    import mlx.core as mx

    from mlx_slm.data.windows import token_windows
    from mlx_slm.distill.losses import kd_loss

    windows = mx.array(token_windows(tokenizer, [sample_text(30, seed=9)], 33, 6))
    inputs, targets = windows[:, :-1], windows[:, 1:]
    return kd_loss(student(inputs), targets, mx.ones(targets.shape), teacher(inputs), alpha=1.0,
                   temperature=1.0)[1]["kd"].item()


def test_distillation_lowers_held_out_kl_and_keeps_dtypes(pair):
    from mlx_slm.distill import DistillConfig, distill

    teacher, student, tokenizer, _ = pair
    before = held_out_kl(student, teacher, tokenizer)
    history = distill(student, teacher, tokenizer, [sample_text(120)], DistillConfig(
        steps=40, batch_size=4, seq_len=32, learning_rate=3e-3, alpha=0.0, temperature=1.0, eval_every=20),
        eval_text=[sample_text(30, seed=9)], progress=False)
    after = held_out_kl(student, teacher, tokenizer)
    assert after < 0.5 * before, (before, after)
    assert history[-1]["eval_kl"] == pytest.approx(after, rel=0.05)
    import mlx.core as mx

    assert student.model.layers[0].self_attn.q_proj.weight.dtype == mx.float16  # trained in float32, saved as loaded


def test_resume_reproduces_an_uninterrupted_run(pair, monkeypatch):
    import mlx_slm
    from mlx_slm.distill import DistillConfig, distill
    from mlx_slm.distill.trainer import Distiller

    teacher, student, tokenizer, tmp_path = pair
    settings = dict(steps=6, batch_size=2, seq_len=32, learning_rate=3e-3, checkpoint_every=2,
                    checkpoint_dir=str(tmp_path / "ckpt"), warmup_steps=2)
    text = [sample_text(60)]
    reference = distill(student, teacher, tokenizer, text, DistillConfig(**settings), progress=False)
    want = parameters(student)

    fresh, _ = mlx_slm.load(tmp_path / "tiny-llama-1")
    settings["checkpoint_dir"] = str(tmp_path / "ckpt2")
    original_step = Distiller.step

    def interrupted(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return original_step(self, step)

    monkeypatch.setattr(Distiller, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(fresh, teacher, tokenizer, text, DistillConfig(**settings), progress=False)
    monkeypatch.setattr(Distiller, "step", original_step)
    resumed_model, _ = mlx_slm.load(tmp_path / "tiny-llama-1")
    resumed = distill(resumed_model, teacher, tokenizer, text, DistillConfig(**settings), resume=True,
                      progress=False)
    assert [r["step"] for r in resumed] == list(range(6))
    assert resumed[-1]["loss"] == pytest.approx(reference[-1]["loss"], rel=1e-6)
    for name, value in parameters(resumed_model).items():
        np.testing.assert_array_equal(value, want[name], err_msg=name)


def test_accumulation_and_checkpointing_do_not_change_the_step(pair):
    import mlx_slm
    from mlx_slm.distill import DistillConfig, distill

    teacher, student, tokenizer, tmp_path = pair
    text = [sample_text(60)]
    distill(student, teacher, tokenizer, text, DistillConfig(steps=1, batch_size=4, seq_len=32, learning_rate=1e-2),
            progress=False)
    other, _ = mlx_slm.load(tmp_path / "tiny-llama-1")
    layer_class = type(other.model.layers[0])
    distill(other, teacher, tokenizer, text, DistillConfig(steps=1, batch_size=2, grad_accum=2, seq_len=32,
                                                           learning_rate=1e-2, grad_checkpoint=True), progress=False)
    assert type(other.model.layers[0]) is layer_class
    got, want = parameters(other), parameters(student)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-3, err_msg=name)


def test_teacher_cache_is_built_once_and_holds_the_top_k(pair):
    import mlx.core as mx

    from mlx_slm.distill.data import WindowBatches
    from mlx_slm.distill.teacher_cache import TeacherCache
    from mlx_slm.runtime import fast_cpu

    teacher, _, tokenizer, tmp_path = pair
    windows = WindowBatches(tokenizer, [sample_text(30)], 16, 2).windows
    cache = TeacherCache(tmp_path / "cache", teacher, windows, 5, progress=False)
    stamp = (cache.folder / "values.npy").stat().st_mtime_ns
    again = TeacherCache(tmp_path / "cache", teacher, windows, 5, progress=False)
    assert again.folder == cache.folder and (again.folder / "values.npy").stat().st_mtime_ns == stamp
    values, indices, lse = again.lookup(np.array([1]))
    with fast_cpu(teacher):  # the cache is computed in float32 (on the numpy engine on a CPU)
        logits = np.array(teacher(mx.array(windows[1:2, :-1])))
    want = np.sort(logits, -1)[..., ::-1][..., :5]
    np.testing.assert_allclose(np.array(values), want, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.array(lse), np.array(mx.logsumexp(mx.array(logits), axis=-1)), rtol=1e-5)
    hot = TeacherCache(tmp_path / "cache", teacher, windows, 5, progress=False, temperature=2.0)
    assert hot.folder != cache.folder  # the logsumexp depends on the temperature: its own cache
    np.testing.assert_allclose(np.array(hot.lookup(np.array([1]))[2]),
                               np.array(mx.logsumexp(mx.array(logits) / 2, axis=-1)), rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(logits, np.array(indices), -1), want, rtol=2e-3, atol=2e-3)
    partial = TeacherCache(tmp_path / "cache", teacher, windows, 5, used=[3, 1], progress=False)
    assert np.load(partial.folder / "values.npy").shape[0] == 2  # only the windows a run reads
    np.testing.assert_array_equal(np.array(partial.lookup(np.array([1]))[0]), np.array(values))


def test_feature_distillation_learns_a_projection_between_widths(tmp_path):
    import mlx_slm
    from mlx_slm.distill import DistillConfig, distill

    teacher, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, seed=0))
    student, _ = mlx_slm.load(tiny_model_folder(tmp_path, seed=1, hidden_size=64, intermediate_size=96,
                                                num_attention_heads=2, num_key_value_heads=1))
    history = distill(student, teacher, tokenizer, [sample_text(80)], DistillConfig(
        steps=60, batch_size=2, seq_len=32, learning_rate=3e-3, alpha=0.0, feature_weight=1.0,
        feature_layers=(0, 1)),
        progress=False)
    assert history[-1]["feature"] < 0.6 * history[0]["feature"]


def test_two_processes_equal_one_process_on_the_doubled_batch(tmp_path):
    from distill_settings import SETTINGS

    import mlx_slm
    from mlx_slm.distill import DistillConfig, distill

    teacher_dir, student_dir = tiny_model_folder(tmp_path, seed=0), tiny_model_folder(tmp_path, seed=1)
    text = tmp_path / "train.txt"
    text.write_text(sample_text(60))
    launcher = Path(sys.executable).with_name("mlx.launch")
    out = tmp_path / "two.npz"
    run = subprocess.run([str(launcher), "-n", "2", "--backend", "ring", sys.executable,
                          str(HERE / "distill_worker.py"), str(teacher_dir), str(student_dir), str(text), str(out)],
                         capture_output=True, text=True, timeout=300, cwd=HERE, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    teacher, tokenizer = mlx_slm.load(teacher_dir)
    student, _ = mlx_slm.load(student_dir)
    distill(student, teacher, tokenizer, str(text), DistillConfig(**SETTINGS), progress=False)
    two = np.load(out)
    for name, value in parameters(student).items():
        np.testing.assert_allclose(two[name], value, rtol=0, atol=2e-3, err_msg=name)
    initial = parameters(mlx_slm.load(student_dir)[0])
    assert max(np.abs(value - initial[name]).max() for name, value in two.items()) > 1e-3  # it did train


def test_bad_requests_fail_clearly(pair):
    import mlx_slm
    from mlx_slm.distill import DistillConfig, distill
    from mlx_slm.errors import SLMError

    teacher, student, tokenizer, tmp_path = pair
    text = [sample_text(40)]
    cases = [
        (dict(divergence="tv"), "unknown divergence"),
        (dict(teacher_top_k=4, feature_weight=1.0), "hidden states"),
        (dict(checkpoint_every=2), "checkpoint_dir"),
        (dict(batch_size=1000), "fewer than one batch"),
        (dict(steps=0), "at least 1"),
    ]
    for options, message in cases:
        with pytest.raises(SLMError, match=message):
            distill(student, teacher, tokenizer, text, DistillConfig(**{"seq_len": 16, **options}), progress=False)
    numpy_model, _ = mlx_slm.load(tmp_path / "tiny-llama-1", backend="numpy")
    with pytest.raises(SLMError, match="backend='mlx'"):
        distill(numpy_model, teacher, tokenizer, text, DistillConfig(seq_len=16), progress=False)
    wide, _ = mlx_slm.load(tiny_model_folder(tmp_path, seed=2, vocab_size=300))
    with pytest.raises(SLMError, match="vocabularies differ"):
        distill(wide, teacher, tokenizer, text, DistillConfig(seq_len=16), progress=False)
    with pytest.raises(SLMError, match="no checkpoint"):
        distill(student, teacher, tokenizer, text, DistillConfig(seq_len=16, checkpoint_dir=str(tmp_path / "none")),
                resume=True, progress=False)


@pytest.mark.parametrize("settings,check", [
    ({"final": 0.5, "initial": 0.1, "start": 1, "end": 4}, "unstructured"),
    ({"pattern": "2:4"}, "2:4"),
])
def test_gradual_pruning_reaches_its_sparsity_and_keeps_zeros(pair, settings, check):
    import mlx.core as mx

    from mlx_slm.distill import DistillConfig, distill
    from mlx_slm.prune.schedule import sparsity_at

    teacher, student, tokenizer, _ = pair
    history = distill(student, teacher, tokenizer, [sample_text(60)], DistillConfig(
        steps=6, batch_size=2, seq_len=32, learning_rate=3e-3, sparsity=settings), progress=False)
    if check == "unstructured":
        assert [r["sparsity"] for r in history] == pytest.approx([sparsity_at(s, 0.1, 0.5, 1, 4) for s in range(6)],
                                                                abs=0.011)
    for path, module in student.named_modules():
        if path.startswith("model.layers.") and hasattr(module, "weight") and path.endswith("proj"):
            zeros = np.array(module.weight.astype(mx.float32)) == 0
            if check == "unstructured":
                assert zeros.sum() == round(0.5 * zeros.size), path
            else:
                assert (zeros.reshape(zeros.shape[0], -1, 4).sum(-1) == 2).all(), path


def test_cli_distill_with_qat_saves_a_quantized_student(pair, capsys):
    import json

    import mlx_slm
    from mlx_slm.cli import main

    teacher, _, tokenizer, tmp_path = pair
    text = tmp_path / "train.txt"
    text.write_text(sample_text(60))
    out = tmp_path / "distilled"
    args = ["distill", str(tmp_path / "tiny-llama-1"), "--teacher", str(tmp_path / "tiny-llama-0"), "--data",
            str(text), "-o", str(out), "--steps", "3", "--batch-size", "2", "--seq-len", "32",
            "--qat-format", "affine", "--qat-bits", "4", "--qat-group-size", "32"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert [r["step"] for r in json.loads((out / "distill_history.json").read_text())] == [0, 1, 2]
    model, _ = mlx_slm.load(out)
    assert mlx_slm.model_config(model)["quantization"]["bits"] == 4
    assert main(args) == 2  # the output exists
    assert "already exists" in capsys.readouterr().err
    assert main(args[:6] + ["--data", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x")]) == 2
    assert "no such training text" in capsys.readouterr().err


def test_qat_rounding_is_what_quantize_stores(pair):
    """After QAT the student's float weights, quantized for real, dequantize to what training saw."""
    import mlx.core as mx

    import mlx_slm
    from mlx_slm.distill import DistillConfig, distill
    from mlx_slm.formats import get_format

    teacher, student, tokenizer, _ = pair
    history = distill(student, teacher, tokenizer, [sample_text(60)], DistillConfig(
        steps=4, batch_size=2, seq_len=32, learning_rate=3e-3, qat={"format": "affine", "bits": 3, "group_size": 32}),
        progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    layer = student.model.layers[1].mlp.down_proj
    seen = np.array(get_format("affine").fake(layer.weight, 3, 32).astype(mx.float32))
    mlx_slm.quantize(student, bits=3, group_size=32, progress=False)
    stored = student.model.layers[1].mlp.down_proj
    got = mx.dequantize(stored.weight, stored.scales, stored.biases, group_size=32, bits=3).astype(mx.float32)
    np.testing.assert_array_equal(np.array(got), seen)


def test_ternary_qat_rounding_is_what_the_ternary_format_stores(pair):
    import mlx.core as mx

    import mlx_slm
    from mlx_slm.distill import DistillConfig, distill
    from mlx_slm.formats import get_format
    from mlx_slm.kernels.ops import dequantize_ternary

    teacher, student, tokenizer, _ = pair
    distill(student, teacher, tokenizer, [sample_text(60)], DistillConfig(
        steps=3, batch_size=2, seq_len=32, learning_rate=3e-3, qat={"format": "ternary", "group_size": 32}),
        progress=False)
    seen = np.array(get_format("ternary").fake(student.model.layers[0].self_attn.o_proj.weight.astype(mx.float32),
                                                 2, 32))
    mlx_slm.quantize(student, format="ternary", group_size=32, progress=False)
    layer = student.model.layers[0].self_attn.o_proj
    got = np.array(dequantize_ternary(layer.codes(), layer["scales"], 32))
    np.testing.assert_allclose(got, seen, rtol=0, atol=1e-6 * np.abs(seen).max())
