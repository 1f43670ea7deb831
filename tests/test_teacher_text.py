"""Text sampled from the float model (mlx_slm.data.teacher_text) and e2e training on it (data="teacher")."""

import hashlib
import math

import numpy as np
import pytest
from helpers import sample_text, tiny_model_folder

pytestmark = pytest.mark.mlx


def test_samples_follow_the_model_at_temperature_one(tmp_path):
    """Each sample starts at a non-special token and continues as the model's own distribution says: the
    mean negative log-likelihood of the sampled tokens under the model matches the mean entropy of the
    distributions they were drawn from (temperature 0 would give far less, uniform sampling far more). A
    sample ends before ``max_tokens`` at an end-of-text token, left out. The same seed samples the same
    tokens; another seed others."""
    import mlx.core as mx

    import mlx_slm
    from mlx_slm.data.teacher_text import sample_tokens
    from mlx_slm.distill.losses import log_softmax

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    samples = sample_tokens(model, tokenizer, 3000, seed=1, batch_size=8, max_tokens=48, progress=False)
    assert sum(map(len, samples)) >= 3000 and all(2 <= len(s) <= 49 for s in samples)
    assert not {s[0] for s in samples} & set(tokenizer.all_special_ids)
    ended = [s for s in samples if len(s) < 49]  # stopped at an end-of-text token, which is not kept
    assert ended and not any(set(s) & set(tokenizer.eos_token_ids) for s in samples)
    nll, entropy, count = 0.0, 0.0, 0
    for ids in samples:
        log_p = np.array(log_softmax(model(mx.array([ids])).astype(mx.float32))[0])
        nll -= log_p[np.arange(len(ids) - 1), ids[1:]].sum()
        entropy -= (np.exp(log_p[:-1]) * log_p[:-1]).sum()
        count += len(ids) - 1
    assert nll / count == pytest.approx(entropy / count, rel=0.05), (nll / count, entropy / count)
    assert sample_tokens(model, tokenizer, 200, seed=1, batch_size=8, max_tokens=48, progress=False) == samples[:8]
    assert sample_tokens(model, tokenizer, 200, seed=2, batch_size=8, max_tokens=48, progress=False) != samples[:8]


def test_texts_sampled_at_once_are_what_each_sampling_gives(tmp_path):
    """sample_texts for several token counts samples the longest once; each text equals what sampling
    that count by itself returns (whole batches of the same seeded draws), the shorter ones first
    batches of the longer (several batches here: 8 samples of at most 17 tokens each)."""
    import mlx_slm
    from mlx_slm.data.teacher_text import sample_texts, sample_tokens

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    sampling = {"seed": 3, "progress": False, "batch_size": 8, "max_tokens": 16}
    counts = [400, 40, 200]
    assert len(sample_tokens(model, tokenizer, counts[0], **sampling)) >= 3 * 8
    together = sample_texts(model, tokenizer, counts, **sampling)
    apart = [sample_texts(model, tokenizer, [count], **sampling)[0] for count in counts]
    assert together == apart
    assert len(together[0]) > len(together[2]) > len(together[1])
    assert together[0].startswith(together[2]) and together[2].startswith(together[1])


def test_e2e_on_teacher_text_trains_on_it_and_not_on_the_calibration_text(tmp_path, monkeypatch):
    """data="teacher": the trainer gets the split of what the float model's sampler returned (asked for as
    many tokens as the steps read), the calibration text only serves the start; the held-out KL on that
    text drops. (A random tiny model writes unreadable tokens, which the trainer refuses, so the sampler
    is replaced here by one returning readable text; the test above tests the sampler.)"""
    import mlx_slm
    from mlx_slm import distill as distill_package
    from mlx_slm.data import teacher_text
    from mlx_slm.quant.methods.e2e import split_text

    sampled, texts = [], []
    real_distill = distill_package.distill
    monkeypatch.setattr(teacher_text, "sample_texts",
                        lambda *a, **k: (sampled.append((a[2], sample_text(100, seed=5))), [sampled[-1][1]])[1])
    monkeypatch.setattr(distill_package, "distill",
                        lambda *a, **k: (texts.append((a[3], k["eval_text"])), real_distill(*a, **k))[1])
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    mlx_slm.quantize(model, bits=2, group_size=32, method="e2e", calib=[sample_text(160)], tokenizer=tokenizer,
                     num_samples=4, seq_len=32, progress=False,
                     e2e_options={"start": "rtn", "steps": 8, "batch_size": 2, "learning_rate": 1e-2,
                                  "eval_every": 4, "eval_windows": 2, "held_out": 0.2, "data": "teacher"})
    record = mlx_slm.model_config(model)["mlx_slm"]["e2e"]
    [(counts, text)] = sampled
    assert counts == [8 * 2 * 32 / 0.8] and record["data"] == "teacher"
    train, held = split_text(text, 0.2)
    assert texts == [([train], [held])]
    assert record["final_kl"] < record["start_kl"] and not record["kept_start"]


def test_bad_data_setting_is_one_line(tmp_path, capsys):
    from mlx_slm.cli import main

    (tmp_path / "calib.txt").write_text(sample_text(20))
    command = ["quantize", str(tiny_model_folder(tmp_path)), "-o", str(tmp_path / "bad"), "--bits", "2",
               "--method", "e2e", "--calib", str(tmp_path / "calib.txt"), "--e2e-data", "web"]
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 2 and "invalid choice: 'web'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_blockwise_on_teacher_text_trains_on_its_windows(tmp_path, monkeypatch):
    """Block-wise data="teacher": the blocks train on windows of what the sampler returned (asked for
    MARGIN times the windows' tokens at the block-wise seed), cut as calibration windows are; the start
    calibrates on the calibration text. (The sampler is replaced as in the test above.)"""
    import mlx_slm
    from mlx_slm.data import teacher_text
    from mlx_slm.data.windows import calibration_windows
    from mlx_slm.quant import blockwise

    readable = sample_text(100, seed=5)
    asked, trained = [], []
    real = blockwise.reconstruct_blocks
    monkeypatch.setattr(teacher_text, "sample_texts", lambda *a, **k: (asked.append(a[2:4]), [readable])[1])
    monkeypatch.setattr(blockwise, "reconstruct_blocks", lambda *a, **k: (trained.append(a[2]), real(*a, **k))[1])
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    mlx_slm.quantize(model, bits=2, group_size=32, method="blockwise", calib=[sample_text(160)], tokenizer=tokenizer,
                     num_samples=8, seq_len=32, progress=False,
                     blockwise_options={"start": "rtn", "epochs": 1, "batch_size": 2, "data": "teacher", "seed": 3})
    assert asked == [([int(np.ceil(teacher_text.MARGIN * 8 * 32))], 3)]
    [tokens] = trained
    np.testing.assert_array_equal(tokens, calibration_windows(tokenizer, [readable], 8, 32)[0])
    record = mlx_slm.model_config(model)["mlx_slm"]  # the calibration record stays the start's text's
    assert record["blockwise"]["data"] == "teacher"
    assert record["calibration"]["text_sha256"] == hashlib.sha256(sample_text(160).encode()).hexdigest()


def test_gptq_calibrated_on_sampled_text_is_gptq_on_that_text(tmp_path, monkeypatch):
    """calib_data="teacher": the float model (not yet quantized) is asked once for MARGIN times the windows'
    tokens at seed 0, and the result is bit for bit gptq calibrated on what it returned; the record says
    so. rtn, uncalibrated, samples nothing; block-wise on teacher text trains on those same windows
    without sampling again. (The sampler is replaced as above.)"""
    from test_quantize import assert_same_weights, saved_weights

    import mlx_slm
    from mlx_slm.data import teacher_text
    from mlx_slm.data.windows import calibration_windows
    from mlx_slm.quant import blockwise

    readable = sample_text(100, seed=5)
    asked, trained = [], []

    def sampler(model, tokenizer, counts, seed=0, progress=True):
        asked.append((counts, seed, mlx_slm.model_config(model).get("quantization")))
        return [readable]

    monkeypatch.setattr(teacher_text, "sample_texts", sampler)
    folder = tiny_model_folder(tmp_path)
    settings = {"bits": 3, "group_size": 32, "num_samples": 8, "seq_len": 32, "progress": False}
    for name, calib in (("sampled", {"calib_data": "teacher"}), ("given", {"calib": [readable]})):
        model, tokenizer = mlx_slm.load(folder)
        mlx_slm.quantize(model, method="gptq", tokenizer=tokenizer, **settings, **calib)
        mlx_slm.save(model, tokenizer, tmp_path / name)
    assert asked == [([int(np.ceil(teacher_text.MARGIN * 8 * 32))], 0, None)]
    assert_same_weights(saved_weights(tmp_path / "sampled"), saved_weights(tmp_path / "given"))
    record = mlx_slm.model_config(mlx_slm.load(tmp_path / "sampled")[0])["mlx_slm"]["calibration"]
    assert record["data"] == "teacher" and record["source"] == "text sampled from the float model (seed 0)"
    assert record["text_sha256"] == hashlib.sha256(readable.encode()).hexdigest()

    model, tokenizer = mlx_slm.load(folder)
    mlx_slm.quantize(model, method="rtn", calib_data="teacher", tokenizer=tokenizer, **settings)
    assert len(asked) == 1

    real = blockwise.reconstruct_blocks
    monkeypatch.setattr(blockwise, "reconstruct_blocks", lambda *a, **k: (trained.append(a[2]), real(*a, **k))[1])
    model, tokenizer = mlx_slm.load(folder)
    mlx_slm.quantize(model, method="blockwise", calib_data="teacher", tokenizer=tokenizer, **settings,
                     blockwise_options={"start": "gptq", "epochs": 1, "batch_size": 2, "data": "teacher"})
    assert len(asked) == 2  # the calibration's sampling only
    [tokens] = trained
    np.testing.assert_array_equal(tokens, calibration_windows(tokenizer, [readable], 8, 32)[0])


def test_quantize_command_can_be_data_free(tmp_path, monkeypatch):
    """--calib-data teacher with --e2e-data teacher, from the command line: no text at all; the start's
    calibration text and the end-to-end text are sampled at once (one sampling asked for both counts), the
    end-to-end run trains on the second, and the record names both. At another --e2e-seed the end-to-end
    text is sampled apart, at that seed."""
    import mlx_slm
    from mlx_slm import distill as distill_package
    from mlx_slm.cli import main
    from mlx_slm.data import teacher_text
    from mlx_slm.quant.methods.e2e import split_text

    asked, trained = [], []
    real_distill = distill_package.distill
    monkeypatch.setattr(teacher_text, "sample_texts", lambda model, tokenizer, counts, seed, progress: (
        asked.append((counts, seed)), [sample_text(100, seed=5 + i) for i in range(len(counts))])[1])
    monkeypatch.setattr(distill_package, "distill", lambda *a, **k: (trained.append(a[3]), real_distill(*a, **k))[1])
    command = ["quantize", str(tiny_model_folder(tmp_path)), "--bits", "4", "--method", "e2e",
               "--calib-data", "teacher", "--num-samples", "4", "--seq-len", "32", "--e2e-data", "teacher",
               "--e2e-steps", "2", "--e2e-batch-size", "2", "--e2e-eval-every", "1", "--e2e-eval-windows", "1"]
    assert main([*command, "-o", str(tmp_path / "q")]) == 0
    windows, e2e = int(np.ceil(teacher_text.MARGIN * 4 * 32)), math.ceil(2 * 2 * 32 / 0.95)
    assert asked == [([windows, e2e], 0)]
    assert trained == [[split_text(sample_text(100, seed=6), 0.05)[0]]]
    record = mlx_slm.model_config(mlx_slm.load(tmp_path / "q")[0])["mlx_slm"]
    assert record["calibration"]["data"] == "teacher" and record["e2e"]["data"] == "teacher"

    asked.clear()
    assert main([*command, "-o", str(tmp_path / "q1"), "--e2e-seed", "1"]) == 0
    assert asked == [([windows], 0), ([e2e], 1)]


def test_missing_calibration_text_names_both_ways(tmp_path, capsys):
    """A calibrated method without --calib: one line, exit 2, naming --calib and --calib-data teacher; no
    output left."""
    from mlx_slm.cli import main

    command = ["quantize", str(tiny_model_folder(tmp_path)), "-o", str(tmp_path / "out"), "--bits", "3",
               "--method", "gptq"]
    status = main(command)
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "calibration text is missing" in err and "--calib FILE" in err and "--calib-data teacher" in err
    assert not (tmp_path / "out").exists()
