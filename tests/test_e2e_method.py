"""Method "e2e": one command for end-to-end QAT from a post-training start, kept only if held-out KL drops."""

import numpy as np
import pytest
from helpers import sample_text, tiny_model_folder
from test_learned import full_kl
from test_quantize import assert_same_weights, saved_weights

pytestmark = pytest.mark.mlx


def e2e_cli(tmp_path, name, *extra):
    return ["quantize", str(tiny_model_folder(tmp_path)), "-o", str(tmp_path / name), "--bits", "2",
            "--group-size", "32", "--method", "e2e", "--calib", str(tmp_path / "calib.txt"), "--num-samples", "4",
            "--seq-len", "32", "--e2e-start", "rtn", "--e2e-batch-size", "2", "--e2e-eval-windows", "2",
            "--e2e-held-out", "0.2", *extra]


def test_e2e_command_trains_in_the_format_and_saves_what_it_trained(tmp_path, capsys):
    import mlx.core as mx
    import mlx_lm

    import mlx_slm
    from mlx_slm.cli import main
    from mlx_slm.data.windows import token_windows
    from mlx_slm.quant.methods.e2e import split_text

    text = sample_text(160)
    (tmp_path / "calib.txt").write_text(text)
    assert main(e2e_cli(tmp_path, "start", "--e2e-steps", "1", "--e2e-learning-rate", "1e3")) == 0  # ruins: kept
    assert "(the start was kept)" in capsys.readouterr().out
    assert main(["quantize", str(tiny_model_folder(tmp_path)), "-o", str(tmp_path / "rtn"), "--bits", "2",
                 "--group-size", "32"]) == 0
    assert_same_weights(saved_weights(tmp_path / "start"), saved_weights(tmp_path / "rtn"))

    assert main(e2e_cli(tmp_path, "e2e", "--e2e-steps", "20", "--e2e-learning-rate", "1e-2")) == 0
    out = capsys.readouterr().out
    assert "e2e from rtn: held-out KL" in out and "(the start was kept)" not in out
    record = mlx_slm.model_config(mlx_slm.load(tmp_path / "e2e")[0])["mlx_slm"]["e2e"]
    assert record["final_kl"] < 0.8 * record["start_kl"] and record["train_tokens"] == 20 * 2 * 32
    assert [step for step, _ in record["held_out_curve"]] == [0, 10, 20]  # the start, then every eval_every=10

    teacher, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    held = token_windows(tokenizer, [split_text(text, 0.2)[1]], 32, 2)
    trained, start = mlx_slm.load(tmp_path / "e2e")[0], mlx_slm.load(tmp_path / "rtn")[0]
    assert full_kl(trained, teacher, held) < 0.8 * full_kl(start, teacher, held)
    stock, _ = mlx_lm.load(str(tmp_path / "e2e"))  # affine results load in stock mlx_lm, same logits
    x = mx.array(held)
    np.testing.assert_allclose(np.array(stock(x)), np.array(trained(x)), rtol=1e-4, atol=1e-4)


def test_e2e_settings_are_checked_before_loading(tmp_path, capsys):
    from mlx_slm.cli import main

    (tmp_path / "calib.txt").write_text(sample_text(20))
    assert main(e2e_cli(tmp_path, "bad", "--e2e-held-out", "1")) == 2
    assert "e2e held_out must be between 0 and 1" in capsys.readouterr().err
    assert main(e2e_cli(tmp_path, "bad", "--format", "lut", "--e2e-start", "gptq", "--group-size", "8")) == 2
    assert "method 'gptq' supports the affine, ternary and ternary_b3 formats only" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("fmt,bits,group_size", [("affine", 2, 32), ("lut", 3, 8), ("ternary", 2, 0)])
def test_trained_results_export_to_core_ml(tmp_path, fmt, bits, group_size):
    """What e2e trains is an ordinary model of its format: saved and read back on the numpy engine, its
    Core ML package (run by the MIL interpreter) decodes greedily as it does, logits within the export
    tests' bound."""
    pytest.importorskip("coremltools")
    from test_coreml_export import PROMPT, TINY_TOLERANCE

    import mlx_slm
    from mlx_slm.coreml.mil_interpreter import MILInterpreter, compare_greedy

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    start = {"affine": "rtn"}.get(fmt, "imatrix")
    mlx_slm.quantize(model, bits=bits, group_size=group_size, format=fmt, method="e2e", calib=[sample_text(160)],
                     tokenizer=tokenizer, num_samples=4, seq_len=32, progress=False,
                     e2e_options={"start": start, "steps": 6, "batch_size": 2, "learning_rate": 1e-3,
                                  "eval_windows": 2, "held_out": 0.2})
    assert not mlx_slm.model_config(model)["mlx_slm"]["e2e"]["kept_start"]
    saved, _ = mlx_slm.load(mlx_slm.save(model, tokenizer, tmp_path / "trained"), backend="numpy")
    package = mlx_slm.export_coreml(saved, tokenizer, tmp_path / "out" / "Tiny.mlpackage", max_context=32)
    package_tokens, model_tokens, delta = compare_greedy(MILInterpreter(package), saved, PROMPT, steps=8)
    assert delta < TINY_TOLERANCE
    # the same greedy tokens wherever the model's two best logits are further apart than the logits may
    # differ (a random tiny model has near-ties; both runs are fed the model's tokens)
    logits = saved(np.array([list(PROMPT) + model_tokens[:-1]], np.int32))[0, len(PROMPT) - 1:]
    best_two = np.sort(logits, axis=-1)[:, -2:]
    clear = best_two[:, 1] - best_two[:, 0] > 2 * TINY_TOLERANCE
    assert clear.sum() >= len(clear) // 2, clear
    assert np.array(package_tokens)[clear].tolist() == np.array(model_tokens)[clear].tolist()


EMBEDDING_2BIT = {"by_type": {"embedding": {"format": "affine", "bits": 2, "group_size": 32}}}


@pytest.mark.parametrize("bits,config,rate", [(2, None, 1e-3), (3, None, 1e-4), (3, EMBEDDING_2BIT, 1e-3)])
def test_default_rate_follows_the_fewest_bits(tmp_path, bits, config, rate):
    """The rate by the start's lowest bits: a 3-bit model whose embedding is 2-bit trains at the 2-bit rate."""
    import mlx_slm

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    mlx_slm.quantize(model, bits=bits, group_size=32, config=config, method="e2e", calib=[sample_text(160)],
                     tokenizer=tokenizer, num_samples=4, seq_len=32, progress=False,
                     e2e_options={"start": "rtn", "steps": 1, "batch_size": 2, "eval_every": 1, "eval_windows": 2,
                                  "held_out": 0.2})
    assert mlx_slm.model_config(model)["mlx_slm"]["e2e"]["learning_rate"] == rate


def test_e2e_adopt_flag_reaches_the_trainer(tmp_path, monkeypatch):
    from mlx_slm import distill as distill_package
    from mlx_slm.cli import main

    (tmp_path / "calib.txt").write_text(sample_text(160))
    seen = []
    real = distill_package.distill
    monkeypatch.setattr(distill_package, "distill", lambda *a, **k: (seen.append(a[4].adopt), real(*a, **k))[1])
    assert main(e2e_cli(tmp_path, "rtn", "--e2e-steps", "1")) == 0  # by default after rtn
    assert main(e2e_cli(tmp_path, "rtn-not", "--e2e-steps", "1", "--no-e2e-adopt")) == 0
    assert main(e2e_cli(tmp_path, "gptq", "--e2e-steps", "1", "--e2e-start", "gptq")) == 0  # not after gptq
    assert main(e2e_cli(tmp_path, "gptq-adopted", "--e2e-steps", "1", "--e2e-start", "gptq", "--e2e-adopt")) == 0
    assert seen == [True, False, False, True]


@pytest.mark.parametrize("fmt,bits,group_size", [("affine", 2, 32), ("ternary", 2, 0)])
def test_saved_model_scores_what_the_curve_says(tmp_path, fmt, bits, group_size):
    """The start's and the saved model's held-out KL are taken on the windows the trainer's curve
    scores: the saved model (detached from its twins, computing from its stored codes) scores what
    the curve's best evaluation scored, and the curve starts from the start's score."""
    import mlx_slm

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path))
    mlx_slm.quantize(model, bits=bits, group_size=group_size, format=fmt, method="e2e", calib=[sample_text(160)],
                     tokenizer=tokenizer, num_samples=4, seq_len=32, progress=False,
                     e2e_options={"start": "rtn" if fmt == "affine" else "imatrix", "steps": 6, "batch_size": 2,
                                  "learning_rate": 1e-3, "eval_every": 2, "eval_windows": 2, "held_out": 0.2})
    record = mlx_slm.model_config(model)["mlx_slm"]["e2e"]
    steps, curve = zip(*record["held_out_curve"])
    assert steps == (0, 2, 4, 6) and curve[0] == record["start_kl"] and not record["kept_start"]
    assert record["final_kl"] == pytest.approx(min(curve[1:]), rel=1e-4)
    assert min(curve[1:]) < record["start_kl"]
