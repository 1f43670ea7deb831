"""The quality benchmarks run end to end on a tiny model (a renamed library function breaks them
only at their last step, after an hour of work on the real model)."""

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import sample_text, tiny_model_folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
pytest.importorskip("mlx.core")


def test_quantization_quality_measures_every_row(tmp_path, monkeypatch):
    import quantization_quality

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "quantization_quality.py", "--model", str(tiny_model_folder(tmp_path, "llama")), "--out", str(out),
        "--methods", "rtn,learned", "--bits", "4", "--targets", "", "--learned-steps", "2",
        "--learned-eval-every", "1", "--num-samples", "4", "--calib-seq-len", "32", "--seq-len", "64",
        "--max-windows", "2"])
    quantization_quality.main()
    rows = {row["method"]: row for row in json.loads((out / "quality.json").read_text())["rows"]}
    assert rows["fp16"]["bpw"] == 16.0 and rows["rtn"]["bpw"] == 4.5
    learned = next(row for name, row in rows.items() if name.startswith("learned"))
    for row in (rows["rtn"], learned):
        assert np.isfinite(row["ppl"]) and 0 < row["kld"] < 1 and 0 <= row["top1"] <= 1


def test_lowbit_training_measures_start_blockwise_and_e2e(tmp_path):
    import lowbit_training

    out = tmp_path / "out"
    lowbit_training.main([
        "--model", str(tiny_model_folder(tmp_path, "llama")), "--out", str(out), "--rows", "affine:2:64",
        "--recipes", "start,blockwise,blockwise+e2e,e2e", "--num-samples", "4", "--calib-seq-len", "32",
        "--blockwise-epochs", "1", "--e2e-steps", "2", "--e2e-batch-size", "2", "--e2e-top-k", "16",
        "--e2e-eval-every", "1", "--e2e-eval-windows", "1", "--seq-len", "64", "--max-windows", "1"])
    rows = {row["recipe"]: row for row in json.loads((out / "lowbit_training.json").read_text())["rows"]}
    assert set(rows) == {"fp16", "gptq", "blockwise", "blockwise+e2e", "e2e"}
    assert rows["e2e"]["tokens"] == 2 * 2 * 32 and [s for s, _ in rows["e2e"]["e2e_heldout_kl"]] == [0, 1, 2]
    # blockwise+e2e continues from the very block-wise model measured (trained once, saved)
    assert rows["blockwise+e2e"]["tokens"] == rows["blockwise"]["tokens"] + 2 * 2 * 32
    assert rows["blockwise+e2e"]["blockwise_seconds"] == rows["blockwise"]["blockwise_seconds"] > 0
    assert rows["blockwise+e2e"]["train_seconds"] > rows["blockwise"]["train_seconds"]
    for name in ("gptq", "blockwise", "blockwise+e2e", "e2e"):
        assert rows[name]["bpw"] == 2.5 and np.isfinite(rows[name]["kld"]) and rows[name]["kld"] > 0


def test_lowbit_training_resumes_only_its_own_settings(tmp_path, capsys):
    """--resume keeps the rows of a run whose file lacks a setting added since (read as its default), and
    with another setting exits with status 2 naming it, the file left as it was (not measured anew)."""
    import lowbit_training

    out = tmp_path / "out"
    command = ["--model", str(tiny_model_folder(tmp_path, "llama")), "--out", str(out), "--rows", "affine:4:64",
               "--recipes", "start", "--num-samples", "4", "--calib-seq-len", "32", "--seq-len", "64",
               "--max-windows", "1"]
    lowbit_training.main(command)
    path = out / "lowbit_training.json"
    written = json.loads(path.read_text())
    del written["settings"]["learned_samples"]  # as a run from before that option wrote it
    path.write_text(json.dumps(written))
    lowbit_training.main(command + ["--resume"])
    assert json.loads(path.read_text()) == written  # nothing measured again
    before = path.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        lowbit_training.main(command + ["--resume", "--num-samples", "8"])
    assert stop.value.code == 2 and path.read_bytes() == before
    error = capsys.readouterr().err.strip()
    assert "num_samples 4 -> 8" in error and "learned_samples" not in error and len(error.splitlines()) == 1


def start_and_e2e(tmp_path, row: str) -> tuple:
    """lowbit_training's start and e2e recipes for ``row`` on a tiny model, briefly: (OUT, rows by recipe,
    the saved start's folder)."""
    import lowbit_training

    out = tmp_path / "out"
    lowbit_training.main([
        "--model", str(tiny_model_folder(tmp_path, "llama")), "--out", str(out), "--rows", row,
        "--recipes", "start,e2e", "--num-samples", "4", "--calib-seq-len", "32", "--e2e-steps", "2",
        "--e2e-batch-size", "2", "--e2e-top-k", "16", "--e2e-eval-every", "1", "--e2e-eval-windows", "1",
        "--seq-len", "64", "--max-windows", "1"])
    rows = {r["recipe"]: r for r in json.loads((out / "lowbit_training.json").read_text())["rows"]}
    (start,) = out.glob(f"start-*-{row.replace(':', '-')}")
    return out, rows, start


def test_a_lowbit_row_can_be_a_bits_per_weight_budget(tmp_path, capsys):
    """bpw:X: the start planned per layer to X bpw (quantize's target_bpw), the end-to-end training at the
    e2e method's rate for the plan's fewest bits, keeping the plan; a malformed budget fails at once."""
    import lowbit_training

    import mlx_slm
    from mlx_slm.quant.methods.e2e import default_rate
    from mlx_slm.runtime import lowest_bits

    out, rows, start = start_and_e2e(tmp_path, "bpw:3")
    model, _ = mlx_slm.load(start)
    plan = mlx_slm.model_config(model)["mlx_slm"]["plan"]
    assert len({row["choice"] for row in plan["layers"]}) >= 2
    assert rows["gptq"]["bpw"] == pytest.approx(3.0, abs=0.01) and rows["e2e"]["bpw"] == rows["gptq"]["bpw"]
    assert rows["e2e"]["e2e"]["learning_rate"] == default_rate(lowest_bits(model))
    with pytest.raises(SystemExit) as exit_info:
        lowbit_training.main(["--out", str(out), "--rows", "bpw:2.5x"])
    assert exit_info.value.code == 2 and "bpw:X" in capsys.readouterr().err


def test_lowbit_training_learned_recipe_is_the_learned_method(tmp_path):
    """The learned recipe trains the start's scales and biases as quantize(method="learned") does, on
    the start's calibration windows: the same model, so the same evaluation."""
    import lowbit_training

    import mlx_slm

    folder, out = tiny_model_folder(tmp_path, "llama"), tmp_path / "out"
    lowbit_training.main([
        "--model", str(folder), "--out", str(out), "--rows", "affine:4:64", "--recipes", "start,learned",
        "--num-samples", "8", "--calib-seq-len", "32", "--learned-steps", "20", "--seq-len", "64",
        "--max-windows", "1"])
    rows = {row["recipe"]: row for row in json.loads((out / "lowbit_training.json").read_text())["rows"]}
    learned = rows["learned"]
    assert learned["learned"]["steps_run"] == 20 and learned["tokens"] == 20 * 4 * 32
    assert not learned["learned"]["kept_start"] and learned["kld"] != rows["gptq"]["kld"]
    assert learned["train_seconds"] == learned["learned_seconds"] > 0

    model, tokenizer = mlx_slm.load(folder)
    mlx_slm.quantize(model, method="learned", bits=4, group_size=64, calib=out / "train.txt", tokenizer=tokenizer,
                     num_samples=8, seq_len=32, progress=False, learned_options={"steps": 20})
    expected = mlx_slm.evaluate(model, tokenizer, out / "eval.txt", reference=mlx_slm.load(folder)[0], seq_len=64,
                                max_windows=1, decode_tokens=0, progress=False)
    assert learned["kld"] == pytest.approx(expected["kld"], rel=1e-5)
    assert learned["ppl"] == pytest.approx(expected["ppl"], rel=1e-5)


def test_lowbit_training_learned_samples_trains_the_start_on_more_windows(tmp_path):
    """--learned-samples: the learned recipe trains on that many windows of the start's text, from the
    start quantized on --num-samples windows (the learned method's split: 1/8 held out)."""
    import lowbit_training

    folder, out = tiny_model_folder(tmp_path, "llama"), tmp_path / "out"
    common = ["--model", str(folder), "--rows", "affine:4:64", "--recipes", "start,learned", "--num-samples", "8",
              "--calib-seq-len", "32", "--learned-steps", "3", "--seq-len", "64", "--max-windows", "1"]
    runs = {}
    for samples in ("8", "16"):
        lowbit_training.main(common + ["--out", str(out / samples), "--learned-samples", samples])
        runs[samples] = {row["recipe"]: row for row in json.loads((out / samples / "lowbit_training.json")
                                                                   .read_text())["rows"]}
    for samples, rows in runs.items():
        report = rows["learned"]["learned"]
        assert (report["train_windows"], report["held_out_windows"]) == (int(samples) * 7 // 8, int(samples) // 8)
        assert rows["learned"]["tokens"] == 3 * 4 * 32 and rows["learned"]["sampling_seconds"] == 0
    assert runs["8"]["gptq"]["kld"] == runs["16"]["gptq"]["kld"]
    assert runs["8"]["learned"]["kld"] != runs["16"]["learned"]["kld"]


def test_lowbit_training_e2e_then_learned_polishes_the_e2e_result(tmp_path):
    """e2e+learned: the e2e recipe's very result (trained once, saved, the same held-out curve), then the
    learned polish on the start's calibration windows from that result; both parts' tokens and seconds
    count. The saved e2e model scores what the e2e row measured."""
    import lowbit_training

    import mlx_slm

    out, folder = tmp_path / "out", tiny_model_folder(tmp_path, "llama")
    lowbit_training.main([
        "--model", str(folder), "--out", str(out), "--rows", "affine:4:64",
        "--recipes", "e2e,e2e+learned", "--num-samples", "8", "--calib-seq-len", "32", "--e2e-steps", "2",
        "--e2e-batch-size", "2", "--e2e-top-k", "16", "--e2e-eval-every", "1", "--e2e-eval-windows", "1",
        "--e2e-lr", "1e-3", "--learned-steps", "20", "--seq-len", "64", "--max-windows", "1"])
    rows = {row["recipe"]: row for row in json.loads((out / "lowbit_training.json").read_text())["rows"]}
    e2e, both = rows["e2e"], rows["e2e+learned"]
    assert both["e2e_heldout_kl"] == e2e["e2e_heldout_kl"] and len(e2e["e2e_heldout_kl"]) == 3
    assert both["learned"]["steps_run"] == 20 and not both["learned"]["kept_start"]
    assert both["tokens"] == e2e["tokens"] + 20 * 4 * 32
    assert both["train_seconds"] - both["learned_seconds"] == pytest.approx(e2e["train_seconds"])
    assert both["learned_seconds"] > 0 and both["kld"] != e2e["kld"]
    (saved,) = out.glob("e2e-*")
    (start,) = out.glob("start-*-affine-4-64")
    assert saved.name.startswith("e2e-") and saved.name.endswith(f"-{start.name}")
    assert json.loads((saved / "settings.json").read_text())["steps"] == 2
    model, tokenizer = mlx_slm.load(saved)
    report = mlx_slm.evaluate(model, tokenizer, out / "eval.txt", reference=mlx_slm.load(folder)[0], seq_len=64,
                              max_windows=1, decode_tokens=0, progress=False)
    assert report["kld"] == pytest.approx(e2e["kld"], rel=1e-6)


def test_lowbit_training_on_teacher_text_counts_the_sampling_in_every_row(tmp_path, monkeypatch):
    """--blockwise-data/--e2e-data teacher: the block-wise windows' text and the end-to-end text are each
    sampled once and reused by every row; "train s" holds the sampling seconds either way, a row reusing
    a text counting the seconds it took. (The sampler is replaced by a slow one returning
    readable text: a random tiny model writes tokens the trainer refuses.)"""
    import lowbit_training

    from mlx_slm.data import teacher_text

    asked = []

    def slow_sampler(model, tokenizer, counts, seed=0, progress=True):
        asked.extend(counts)
        time.sleep(0.3)
        return [sample_text(150, seed=len(asked))]

    monkeypatch.setattr(teacher_text, "sample_texts", slow_sampler)
    out = tmp_path / "out"
    lowbit_training.main([
        "--model", str(tiny_model_folder(tmp_path, "llama")), "--out", str(out), "--rows", "affine:2:64,affine:3:64",
        "--recipes", "blockwise,blockwise+e2e", "--num-samples", "4", "--calib-seq-len", "32",
        "--blockwise-epochs", "1", "--blockwise-data", "teacher", "--e2e-steps", "2", "--e2e-batch-size", "2",
        "--e2e-top-k", "16", "--e2e-eval-every", "1", "--e2e-eval-windows", "1", "--e2e-data", "teacher",
        "--seq-len", "64", "--max-windows", "1"])
    rows = {(r["row"], r["recipe"]): r for r in json.loads((out / "lowbit_training.json").read_text())["rows"]}
    windows, e2e = int(np.ceil(teacher_text.MARGIN * 4 * 32)), math.ceil(2 * 2 * 32 / 0.95)
    assert asked == [windows, e2e]  # the second row reuses both of the first row's texts
    windows_seconds, e2e_seconds = (float((out / f"teacher-{n}-0.seconds").read_text()) for n in (windows, e2e))
    assert windows_seconds >= 0.3 and e2e_seconds >= 0.3
    for name in ("affine:2:64", "affine:3:64"):
        blockwise, both = rows[(name, "blockwise")], rows[(name, "blockwise+e2e")]
        assert blockwise["sampling_seconds"] == windows_seconds
        assert both["sampling_seconds"] == pytest.approx(blockwise["sampling_seconds"] + e2e_seconds)
        assert blockwise["train_seconds"] >= blockwise["sampling_seconds"] + blockwise["blockwise_seconds"]
        assert both["train_seconds"] > both["sampling_seconds"] + both["blockwise_seconds"]


def test_lowbit_training_can_calibrate_the_start_on_teacher_text(tmp_path, monkeypatch):
    """--start-data teacher: the start is gptq calibrated on the windows the block-wise pass trains on
    (one sampling for both), bit for bit what quantize does with that text as its calibration; its
    sampling counts in the start's seconds; the block-wise result is kept apart from the calibrated
    start's. A later run into the same OUT with the calibration text saves a start of its own (and
    one block-wise result per start and settings) instead of reusing the one sampled text gave."""
    import lowbit_training
    from mlx.utils import tree_flatten

    import mlx_slm
    from mlx_slm.data import teacher_text

    asked = []

    def slow_sampler(model, tokenizer, counts, seed=0, progress=True):
        asked.extend(counts)
        time.sleep(0.3)
        return [sample_text(150, seed=7)]

    monkeypatch.setattr(teacher_text, "sample_texts", slow_sampler)
    folder, out = tiny_model_folder(tmp_path, "llama"), tmp_path / "out"
    common = ["--model", str(folder), "--out", str(out), "--rows", "affine:2:64", "--num-samples", "4",
              "--calib-seq-len", "32", "--blockwise-epochs", "1", "--blockwise-data", "teacher", "--seq-len", "64",
              "--max-windows", "1"]
    lowbit_training.main(common + ["--recipes", "start,blockwise", "--start-data", "teacher"])
    assert asked == [int(np.ceil(teacher_text.MARGIN * 4 * 32))]
    rows = {r["recipe"]: r for r in json.loads((out / "lowbit_training.json").read_text())["rows"]}
    assert rows["gptq"]["total_seconds"] >= 0.3 and rows["gptq"]["train_seconds"] == 0
    (on_teacher,) = out.glob("start-*-affine-2-64")
    assert json.loads((on_teacher / "settings.json").read_text())["start_data"] == "teacher"
    (blockwise,) = out.glob("blockwise-*")
    assert blockwise.name.endswith(f"-{on_teacher.name}")

    model, tokenizer = mlx_slm.load(folder)
    mlx_slm.quantize(model, method="gptq", bits=2, group_size=64, calib=[sample_text(150, seed=7)],
                     tokenizer=tokenizer, num_samples=4, seq_len=32, progress=False)
    expected = dict(tree_flatten(model.parameters()))
    saved = dict(tree_flatten(mlx_slm.load(on_teacher)[0].parameters()))
    assert saved.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(np.array(saved[name]), np.array(value), err_msg=name)
    lowbit_training.main(common + ["--recipes", "start,blockwise"])
    lowbit_training.main(common + ["--recipes", "blockwise", "--blockwise-epochs", "2"])
    starts, blockwise = sorted(out.glob("start-*-affine-2-64")), sorted(out.glob("blockwise-*"))
    assert len(starts) == 2 and len(blockwise) == 3 and len(asked) == 1  # every pass reuses the one sampled text
    (calib,) = set(starts) - {on_teacher}
    assert json.loads((calib / "settings.json").read_text())["start_data"] == "calib"
    on_calib = dict(tree_flatten(mlx_slm.load(calib)[0].parameters()))
    assert any(not np.array_equal(np.array(on_calib[n]), np.array(v)) for n, v in expected.items())


def test_a_lowbit_row_can_keep_its_embedding_at_more_bits(tmp_path, capsys):
    """affine:2:64:4: decoder layers 2-bit, the tied embedding 4-bit affine g64, through start and e2e
    (the e2e twins train each layer at its own bits); a malformed row fails before any work."""
    import lowbit_training
    from mlx.utils import tree_flatten

    out, rows, start = start_and_e2e(tmp_path, "affine:2:64:4")
    config = json.loads((start / "config.json").read_text())["quantization"]
    assert config["model.embed_tokens"] == {"bits": 4, "group_size": 64, "mode": "affine"}
    assert config["bits"] == 2
    import mlx_slm

    model, _ = mlx_slm.load(start)
    weights = dict(tree_flatten(model.parameters()))
    assert weights["model.embed_tokens.weight"].shape[1] * 32 == 128 * 4  # 4-bit codes packed in uint32
    for name in ("gptq", "e2e"):
        assert 2.5 < rows[name]["bpw"] < 4.5 and np.isfinite(rows[name]["kld"])
    with pytest.raises(SystemExit) as exit_info:
        lowbit_training.main(["--out", str(out), "--rows", "affine:2"])
    assert exit_info.value.code == 2 and "FORMAT:BITS:GROUP[:EMBED]" in capsys.readouterr().err


def test_engine_agreement_compares_both_engines(tmp_path, monkeypatch):
    import engine_agreement

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "engine_agreement.py", "--model", str(tiny_model_folder(tmp_path, "llama")), "--out", str(out),
        "--methods", "imatrix,sparsegpt", "--num-samples", "4", "--calib-seq-len", "32", "--seq-len", "64",
        "--max-windows", "2"])
    engine_agreement.main()
    rows = json.loads((out / "engines.json").read_text())["rows"]
    assert [(row["method"], row["engine"]) for row in rows] == [
        ("imatrix", "numpy"), ("imatrix", "mlx"), ("sparsegpt", "numpy"), ("sparsegpt", "mlx")]
    for row in rows:
        assert 0.9 < row["equal"] <= 1 and 0 < row["kld"] < 1 and row["block_mb"] > 0


def test_lowbit_summary_keeps_the_last_row_of_each_recipe_and_budget(tmp_path, capsys):
    """The summary reads lowbit_training results oldest first: a later file's row replaces an earlier
    one; rows run with more windows, end-to-end steps, learned windows or learned steps are recipes of their
    own, the budget named (each but the windows only where the recipe has that part), rows with another
    rate are left out; rows
    trained on the float model's text are a recipe of their own; each target is judged on the best row
    of its format, whatever its budget."""
    import lowbit_summary

    def row(name, recipe, ppl, kld, top1=0.5, curve=None, bits=2):
        return {"row": name, "recipe": recipe, "format": name.split(":")[0], "bits": bits, "bpw": 2.5, "ppl": ppl,
                "kld": kld, "top1": top1, "tokens": 0 if curve is None else 40960, "train_seconds": 1.0,
                **({"e2e_heldout_kl": curve} if curve else {})}

    fp16 = {"row": "fp16", "recipe": "fp16", "ppl": 20.0}
    default = {"num_samples": 32, "e2e_steps": 40, "e2e_lr": None}
    older, newer = tmp_path / "older.json", tmp_path / "newer.json"
    older.write_text(json.dumps({"settings": default, "rows": [
        fp16, row("affine:2:64", "gptq", 400.0, 2.8), row("affine:2:64", "e2e", 260.0, 2.4, curve=[[10, 1.3]]),
        row("affine:4:64", "gptq", 26.0, 0.049, top1=0.9, bits=4)]}))
    newer.write_text(json.dumps({"runs": [
        {"settings": default, "rows": [fp16, row("affine:2:64", "gptq", 390.0, 2.7),
                                       row("affine:2:64", "blockwise", 45.0, 1.0)]},
        {"settings": {**default, "e2e_steps": 160}, "rows": [row("affine:2:64", "gptq", 391.0, 2.7),
                                                             row("affine:2:64", "e2e", 30.0, 0.5, curve=[[0, 2.0]])]},
        {"settings": {**default, "num_samples": 128, "start_data": "teacher"},
         "rows": [row("affine:2:64", "gptq", 250.0, 2.3)]},
        {"settings": {**default, "e2e_lr": 1e-2}, "rows": [row("affine:2:64", "e2e", 31.0, 0.5, curve=[[0, 2.0]])]},
        {"settings": {**default, "e2e_data": "teacher"},
         "rows": [row("affine:2:64", "e2e", 50.0, 1.1, curve=[[0, 2.0]])]},
        {"settings": {**default, "blockwise_data": "teacher"},
         "rows": [row("affine:2:64", "blockwise+e2e", 48.0, 1.0, curve=[[0, 2.0]])]},
        {"settings": {**default, "start_data": "teacher", "e2e_data": "teacher"},
         "rows": [row("affine:2:64", "gptq", 300.0, 2.5), row("affine:2:64", "e2e", 47.0, 1.0, curve=[[0, 2.0]])]},
        {"settings": {**default, "learned_samples": 512, "learned_steps": 400},
         "rows": [row("affine:4:64", "gptq", 26.0, 0.049, top1=0.9, bits=4),
                  row("affine:4:64", "learned", 25.0, 0.045, top1=0.9, bits=4)]},
    ]}))
    lowbit_summary.main([str(older), str(newer), "--out", str(tmp_path / "summary.json")])
    summary = json.loads((tmp_path / "summary.json").read_text())
    kept = {(r["row"], r["recipe"]): (r["ppl"], r["source"]) for r in summary["rows"]}
    assert kept == {("affine:2:64", "gptq"): (391.0, "newer.json"), ("affine:2:64", "blockwise"): (45.0, "newer.json"),
                    ("affine:2:64", "e2e (160 steps)"): (30.0, "newer.json"),  # a budget of its own
                    ("affine:2:64", "gptq/teacher (128 windows)"): (250.0, "newer.json"),
                    ("affine:2:64", "e2e"): (260.0, "older.json"), ("affine:4:64", "gptq"): (26.0, "newer.json"),
                    ("affine:2:64", "e2e/teacher"): (50.0, "newer.json"),  # trained on the float model's text
                    ("affine:2:64", "blockwise/teacher+e2e"): (48.0, "newer.json"),
                    ("affine:2:64", "gptq/teacher"): (300.0, "newer.json"),  # the start calibrated on it
                    ("affine:2:64", "gptq/teacher+e2e/teacher"): (47.0, "newer.json"),
                    ("affine:4:64", "learned (512 learned windows, 400 learned steps)"): (25.0, "newer.json")}
    goals = {goal["target"].split(":")[0]: goal for goal in summary["targets"]}
    assert goals["2-bit g64"]["best_recipe"] == "e2e (160 steps)" and goals["2-bit g64"]["value"] == 30.0 / 20.0
    assert goals["2-bit g64"]["met"] and goals["4-bit g64"]["met"]
    out = capsys.readouterr().out
    assert "?, 1.300" in out  # a curve without its start point says so
    shown = [line[14:].split("  ")[0] for line in out.splitlines() if line.startswith("affine:2:64")]
    assert shown == ["gptq", "gptq/teacher", "gptq/teacher (128 windows)", "blockwise", "e2e", "e2e (160 steps)",
                     "e2e/teacher", "gptq/teacher+e2e/teacher", "blockwise/teacher+e2e"]  # recipes in the
    # benchmark's order, a start's text before a part's, a larger budget after the default one


def test_kl_by_part_scores_what_quantize_gives_keeping_the_other_layers_float(tmp_path, capsys):
    """Each part's "alone" model is the float model with only that part quantized, its "without" model the
    quantized one with that part float: the same scores as quantize's own keep settings give (rtn rounds
    each layer on its own, so the layers are the same)."""
    import kl_by_part

    import mlx_slm

    folder, out = tiny_model_folder(tmp_path, "llama"), tmp_path / "out"
    model, tokenizer = mlx_slm.load(folder)
    mlx_slm.quantize(model, method="rtn", bits=3, group_size=64, progress=False)
    mlx_slm.save(model, tokenizer, tmp_path / "q3")
    kl_by_part.main([str(tmp_path / "q3"), "--model", str(folder), "--out", str(out), "--seq-len", "64",
                     "--max-windows", "2"])
    rows = {row["part"]: row for row in json.loads((out / "kl_by_part.json").read_text())["rows"]}
    assert list(rows) == ["all", "embedding+head", "attention", "mlp", "blocks 0-0", "blocks 1-1",
                          "embedding lookup", "output head"]
    assert rows["embedding+head"]["weight_share"] + rows["attention"]["weight_share"] + rows["mlp"][
        "weight_share"] == pytest.approx(1.0)
    reference = mlx_slm.load(folder)[0]

    def kl(config=None, quantized=True) -> float:
        model, _ = mlx_slm.load(folder)
        if quantized:
            mlx_slm.quantize(model, method="rtn", bits=3, group_size=64, progress=False, config=config)
        return mlx_slm.evaluate(model, tokenizer, [kl_by_part.local_text("eval")[0]], reference=reference,
                                seq_len=64, max_windows=2, decode_tokens=0, progress=False)["kld"]

    assert rows["all"]["alone"]["kld"] == pytest.approx(kl(), rel=1e-5) and rows["all"]["alone"]["kld"] > 0
    assert rows["embedding+head"]["alone"]["kld"] == pytest.approx(kl({"by_type": {"linear": "keep"}}), rel=1e-5)
    assert rows["embedding+head"]["without"]["kld"] == pytest.approx(kl({"by_type": {"embedding": "keep"}}), rel=1e-5)
    assert rows["mlp"]["alone"]["kld"] == pytest.approx(
        kl({"by_type": {"embedding": "keep"}, "by_name": {"*.self_attn.*": "keep"}}), rel=1e-5)
    assert rows["blocks 1-1"]["without"]["kld"] == pytest.approx(kl({"by_name": {"model.layers.1.*": "keep"}}),
                                                                 rel=1e-5)
    assert "KL alone" in capsys.readouterr().out

    def one_role(role: str, values, windows: int) -> float:  # the float model untied, one role with ``values``
        from mlx import nn

        model, _ = mlx_slm.load(folder)
        model.set_dtype(mx.float32)
        own = model.model.embed_tokens.weight
        model.args.tie_word_embeddings = False
        model.lm_head = nn.Linear(own.shape[1], own.shape[0], bias=False)
        model.lm_head.weight = values if role == "head" else own
        model.model.embed_tokens.weight = own if role == "head" else values
        float32 = mlx_slm.load(folder)[0]
        float32.set_dtype(mx.float32)
        return mlx_slm.evaluate(model, tokenizer, [kl_by_part.local_text("eval")[0]], reference=float32, seq_len=64,
                                max_windows=windows, decode_tokens=0, progress=False, cpu_engine="mlx")["kld"]

    import mlx.core as mx

    stored = mlx_slm.load(folder)[0].model.embed_tokens.weight  # rtn is mx.quantize; its scales in float32
    codes, scales, biases = mx.quantize(stored, group_size=64, bits=3)
    rtn = mx.dequantize(codes, scales.astype(mx.float32), biases.astype(mx.float32), group_size=64, bits=3)
    assert rows["embedding lookup"]["alone"]["kld"] == pytest.approx(one_role("lookup", rtn, 2), rel=1e-4)
    assert rows["output head"]["alone"]["kld"] == pytest.approx(one_role("head", rtn, 2), rel=1e-4)
    assert 0 < rows["embedding lookup"]["alone"]["kld"] != rows["output head"]["alone"]["kld"] > 0
    model, _ = mlx_slm.load(folder)  # a ternary embedding: its roles computing with its trits times scales
    mlx_slm.quantize(model, method="rtn", format="ternary", bits=2, group_size=0, progress=False)
    mlx_slm.save(model, tokenizer, tmp_path / "ternary")
    kl_by_part.main([str(tmp_path / "ternary"), "--model", str(folder), "--out", str(tmp_path / "t"), "--seq-len",
                     "64", "--max-windows", "1"])
    rows = {row["part"]: row for row in json.loads((tmp_path / "t" / "kl_by_part.json").read_text())["rows"]}
    trits = model.model.embed_tokens.dense_weight().astype(mx.float32)
    assert rows["output head"]["alone"]["kld"] == pytest.approx(one_role("head", trits, 1), rel=1e-4)
    assert rows["embedding lookup"]["alone"]["kld"] == pytest.approx(one_role("lookup", trits, 1), rel=1e-4)
    with pytest.raises(SystemExit) as exit_info:  # the float model itself: nothing to swap
        kl_by_part.main([str(folder), "--model", str(folder), "--out", str(out)])
    assert exit_info.value.code == 2 and "holds no quantized layer" in capsys.readouterr().err
