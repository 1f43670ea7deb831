"""Outputs never replace a user's files: only empty folders or folders mlx-slm wrote, never inputs or cwd."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import sample_text, tiny_model_folder

import mlx_slm
from mlx_slm.cli import main
from mlx_slm.errors import SLMError
from mlx_slm.io.atomic import MARKER, atomic_directory, foreign_files


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny(tmp_path):
    folder = tiny_model_folder(tmp_path / "in")
    model, tokenizer = mlx_slm.load(folder, backend="numpy")
    return folder, model, tokenizer


def test_overwrite_replaces_only_what_mlx_slm_wrote(tmp_path, tiny):
    _, model, tokenizer = tiny
    out = tmp_path / "out"
    mlx_slm.save(model, tokenizer, out)
    written = sorted(p.name for p in out.iterdir())
    assert MARKER in written and foreign_files(out) == []
    mlx_slm.save(model, tokenizer, out, overwrite=True)  # its own output: replaced
    assert sorted(p.name for p in out.iterdir()) == written
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SLMError, match=r"files mlx-slm did not write \(notes.txt\)"):
        mlx_slm.save(model, tokenizer, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_users_folder_is_never_replaced(tmp_path, tiny):
    _, model, tokenizer = tiny
    user = tmp_path / "user"
    (user / "deep").mkdir(parents=True)
    (user / "deep" / "keep.txt").write_text("keep")
    before = snapshot(user)
    for overwrite in (False, True):
        with pytest.raises(SLMError, match="already exists" if not overwrite else "did not write"):
            mlx_slm.save(model, tokenizer, user, overwrite=overwrite)
    assert snapshot(user) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".user")] == []


def test_empty_folder_is_replaced(tmp_path, tiny):
    _, model, tokenizer = tiny
    (tmp_path / "empty").mkdir()
    mlx_slm.save(model, tokenizer, tmp_path / "empty", overwrite=True)
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_current_folder_and_its_ancestors_refused(tmp_path, tiny, monkeypatch):
    _, model, tokenizer = tiny
    work = tmp_path / "a" / "b"
    mlx_slm.save(model, tokenizer, work)  # a folder of ours, so only the cwd rule can refuse it
    monkeypatch.chdir(work)
    for target in (".", "..", str(work)):
        with pytest.raises(SLMError, match="current folder"):
            mlx_slm.save(model, tokenizer, target, overwrite=True)
    assert (work / "model.safetensors").is_file()


def test_loaded_model_is_an_input(tmp_path, tiny):
    source, model, tokenizer = tiny
    before = snapshot(source)
    for target in (source, source.parent):
        with pytest.raises(SLMError, match="an input of this run"):
            mlx_slm.save(model, tokenizer, target, overwrite=True)
    assert snapshot(source) == before


def dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True,
                          text=True).stdout.strip()


def test_leftovers_of_killed_runs_are_removed(tmp_path, tiny):
    _, model, tokenizer = tiny
    dead = dead_pid()
    (tmp_path / "out").mkdir()
    stale = [tmp_path / f".out.partial-{dead}-x1y2", tmp_path / f".out.old-{dead}"]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"0" * 100)
    live = tmp_path / f".out.partial-{os.getppid()}-abcd"  # a running process's: left alone
    live.mkdir()
    unrelated = tmp_path / ".other.partial-1-zz"
    unrelated.mkdir()
    mlx_slm.save(model, tokenizer, tmp_path / "out", overwrite=True)
    assert not any(folder.exists() for folder in stale)
    assert live.exists() and unrelated.exists()


def test_an_output_set_aside_by_a_killed_run_is_put_back(tmp_path, tiny):
    """Killed between "rename the old output aside" and "rename the new one in": the old one comes back."""
    _, model, tokenizer = tiny
    aside = tmp_path / f".out.old-{dead_pid()}"
    aside.mkdir()
    (aside / "model.safetensors").write_bytes(b"1" * 100)
    with pytest.raises(SLMError, match="already exists"):
        mlx_slm.save(model, tokenizer, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"1" * 100 and not aside.exists()


def test_failure_leaves_the_old_output(tmp_path, tiny):
    _, model, tokenizer = tiny
    out = tmp_path / "out"
    mlx_slm.save(model, tokenizer, out)
    before = snapshot(out)
    with pytest.raises(RuntimeError), atomic_directory(out, overwrite=True) as folder:
        (folder / "half.bin").write_bytes(b"1")
        raise RuntimeError("killed")
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.parametrize("command", [
    ["convert", "{src}"],
    ["quantize", "{src}", "--bits", "4"],
    ["prune", "{src}", "--method", "magnitude", "--sparsity", "0.5"],
])
@pytest.mark.parametrize("target", [".", "user", "src"])
def test_cli_refuses_before_loading(tmp_path, tiny, monkeypatch, capsys, command, target):
    """`-o . --overwrite` (the reported data loss), a user's folder and the input itself: one line, exit 2."""
    source, _, _ = tiny
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("keep")
    monkeypatch.chdir(user)
    before = {folder: snapshot(folder) for folder in (source, user)}
    output = {".": ".", "user": str(user), "src": str(source)}[target]
    argv = [a.format(src=source) for a in command] + ["-o", output, "--overwrite", "--backend", "numpy"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlx-slm: error: ")
    assert {folder: snapshot(folder) for folder in (source, user)} == before


def test_cli_checks_the_output_before_the_model(tmp_path, capsys):
    """An existing output is reported even when the model would fail to load: the check comes first."""
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    assert main(["convert", str(tmp_path / "bad.gguf"), "-o", str(tmp_path / "out"), "--backend", "numpy"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("content,match", [
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", r"not a text file: a NUL byte at offset 7"),
    (b"plain words then \xff\xfe latin", r"not UTF-8 text: byte 0xff at offset 17"),
])
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_binary_or_undecodable_text_is_one_clear_error(tmp_path, tiny, capsys, content, match, suffix):
    """eval --text and quantize --calib refuse binary input (it used to run for minutes on /bin/ls)."""
    source, _, _ = tiny
    text = tmp_path / f"bad{suffix}"
    text.write_bytes(content)
    assert main(["eval", str(source), "--text", str(text), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlx-slm: error: ")
    assert re.search(match, err[0]), err[0]
    assert main(["quantize", str(source), "-o", str(tmp_path / "q"), "--method", "imatrix", "--calib", str(text),
                 "--backend", "numpy"]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "q").exists()
    if suffix == ".jsonl":  # fine-tuning data is read the same way
        from mlx_slm.finetune.data import read_records

        with pytest.raises(SLMError, match=match):
            read_records(text)


def test_text_the_tokenizer_cannot_read_is_refused_with_its_share(tmp_path, tiny, capsys):
    """Valid UTF-8 in a script the vocabulary lacks becomes byte pieces: measured and refused."""
    from mlx_slm.data.tokens import unreadable_share

    source, model, tokenizer = tiny
    linear_b = "".join(chr(0x10000 + (i * 7) % 90) for i in range(3000))  # 4-byte characters
    (tmp_path / "linear_b.txt").write_text(linear_b)
    english = sample_text(10)
    assert unreadable_share(tokenizer, np.asarray(tokenizer.encode(english))) == 0.0
    share = unreadable_share(tokenizer, np.asarray(tokenizer.encode(linear_b)))
    assert share > 0.9
    assert main(["quantize", str(source), "-o", str(tmp_path / "q"), "--method", "imatrix", "--calib",
                 str(tmp_path / "linear_b.txt"), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{share:.0%} of its tokens are unknown or partial characters" in err[0]
    assert main(["eval", str(source), "--text", str(tmp_path / "linear_b.txt"), "--backend", "numpy"]) == 2
    assert "partial characters" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("settings,match", [
    (["--bits", "1"], "bits"), (["--group-size", "100"], "group"),
    (["--format", "lut", "--method", "gptq"], "affine, ternary and ternary_b3 formats only"),
])
def test_quantize_settings_are_checked_before_the_model_loads(tmp_path, capsys, settings, match):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)  # would fail to load: the settings fail first
    assert main(["quantize", str(tmp_path / "bad.gguf"), "-o", str(tmp_path / "q"), *settings,
                 "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert match in err and "gguf" not in err.lower(), err


@pytest.mark.parametrize("method", ["blockwise", "learned", "e2e"])
def test_training_methods_need_mlx(tiny, method):
    """Without MLX (or on the numpy backend) the trained methods say so in one line."""
    from mlx_slm.errors import MLXRequiredError

    _, model, tokenizer = tiny
    with pytest.raises(MLXRequiredError, match=f"method '{method}' \\(training\\) needs MLX"):
        mlx_slm.quantize(model, bits=2, method=method, calib=["some text " * 50], tokenizer=tokenizer,
                         num_samples=2, seq_len=16, progress=False)


def test_sampled_calibration_needs_mlx(tiny):
    """calib_data="teacher" samples with MLX: on the numpy backend (or without MLX) one clear line, before
    anything is sampled or quantized; with a text too, the request is refused as contradictory."""
    from mlx_slm.errors import MLXRequiredError

    _, model, tokenizer = tiny
    with pytest.raises(MLXRequiredError, match=r"calibration on text sampled from the model \(calib_data='teacher'\) "
                                               "needs MLX"):
        mlx_slm.quantize(model, bits=4, method="gptq", calib_data="teacher", tokenizer=tokenizer, num_samples=2,
                         seq_len=16, progress=False)
    with pytest.raises(SLMError, match="reads no text: leave out calib"):
        mlx_slm.quantize(model, bits=4, method="gptq", calib=["some text " * 50], calib_data="teacher",
                         tokenizer=tokenizer, num_samples=2, seq_len=16, progress=False)
    assert not mlx_slm.model_config(model).get("quantization")


def test_sampled_calibration_with_a_text_fails_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)  # would fail to load: the request fails first
    (tmp_path / "calib.txt").write_text("some text " * 50)
    assert main(["quantize", str(tmp_path / "bad.gguf"), "-o", str(tmp_path / "q"), "--method", "gptq",
                 "--calib", str(tmp_path / "calib.txt"), "--calib-data", "teacher", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "reads no text: leave out calib (--calib)" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "q").exists()
