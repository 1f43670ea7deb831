"""Every bad input through the ``mlx-slm`` command: exit status 2, one line, no file touched.

One table (:data:`CASES`) holds the bad inputs found so far (issue 26's list and those
handled before it); each runs through the command's ``main`` in a folder of prepared
files, and the test asserts the status, that stderr is exactly one line starting
``mlx-slm`` with the expected words, and that no file under the folder changed, appeared
or vanished. Ctrl-C is driven through the real command in a subprocess at several
moments, from the imports to the work: status 130, one line, no partial output left; SIGTERM likewise (143).
"""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import sample_text, tiny_model_folder
from test_gguf import write_tiny_gguf

from mlx_slm.cli import main


def snapshot(folder):
    """Every file and folder under ``folder`` with its bytes (folders map to None)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def prepare(root):
    """The files the cases read, under ``root``."""
    from helpers import tiny_config, tiny_weights

    model = tiny_model_folder(root, seed=0)
    broken = tiny_model_folder(root, seed=9)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[:1000])
    notok = tiny_model_folder(root, seed=3)
    for path in notok.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            path.unlink()
    arch = tiny_model_folder(root, seed=4)
    (arch / "config.json").write_text(json.dumps({**json.loads((arch / "config.json").read_text()),
                                                  "model_type": "made_up_arch"}))
    (root / "noconfig").mkdir()
    (root / "noconfig" / "readme.md").write_text("not a model")
    config = tiny_config()
    write_tiny_gguf(root / "good.gguf", config, tiny_weights(config), quant="Q8_0")
    good = (root / "good.gguf").read_bytes()
    (root / "magic.gguf").write_bytes(b"GGML" + good[4:])
    (root / "zeros.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    (root / "huge.gguf").write_bytes(good[:8] + (2**62).to_bytes(8, "little") + good[16:])  # tensor count
    (root / "cut.gguf").write_bytes(good[: len(good) // 2])
    (root / "model.bin").write_bytes(b"\0" * 100)
    (root / "text.txt").write_text(sample_text(10))
    (root / "empty.txt").write_text("")
    (root / "nul.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    (root / "latin.txt").write_bytes(b"plain words then \xff\xfe latin")
    (root / "latin.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (root / "nofield.jsonl").write_text('{"words": "no text field"}\n' * 20)
    (root / "notjson.jsonl").write_text("{not json\n")
    (root / "linear_b.txt").write_text("".join(chr(0x10000 + (i * 7) % 90) for i in range(3000)))
    (root / "python.yaml").write_text('by_name: !!python/object/apply:os.system ["echo owned"]\n')
    (root / "broken.yaml").write_text("by_name: {lm_head: [\n")
    (root / "user").mkdir()
    (root / "user" / "keep.txt").write_text("keep")
    (root / "notes.mlpackage").mkdir()
    (root / "notes.mlpackage" / "keep.txt").write_text("keep")
    (root / "cwd").mkdir()
    (root / "afile").write_text("a file")
    return model


# name: (argv with {root}, a regex the one line must match)
CASES = {
    # the model argument
    "missing model": (["info", "{root}/nope"], "no model at"),
    "folder without config.json": (["info", "{root}/noconfig"], "has no config.json"),
    "folder without tokenizer files": (["quantize", "{root}/tiny-llama-3", "-o", "{root}/o"], "tokenizer"),
    "truncated safetensors": (["info", "{root}/tiny-llama-9"], "truncated"),
    "unsupported architecture": (["info", "{root}/tiny-llama-4"], "made_up_arch"),
    "not a model file": (["info", "{root}/model.bin"], "not a .gguf model"),
    "GGUF bad magic": (["convert", "{root}/magic.gguf", "-o", "{root}/o"], "GGUF"),
    "GGUF zeros": (["convert", "{root}/zeros.gguf", "-o", "{root}/o"], "GGUF"),
    "GGUF huge tensor count": (["info", "{root}/huge.gguf"], "GGUF"),
    "GGUF cut in half": (["info", "{root}/cut.gguf"], "GGUF"),
    # settings, refused before the model loads
    "bits 1": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--bits", "1"], "bits"),
    "bits 7": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--bits", "7"], "supports bits"),
    "group size 100": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--group-size", "100"],
                       "group sizes"),
    "lut with gptq": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--format", "lut", "--method", "gptq"],
                      "affine, ternary and ternary_b3 formats only"),
    "option of a method not run": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--method", "gptq",
                                    "--calib", "{root}/text.txt", "--blockwise-epochs", "2"], "blockwise"),
    "calibrated method without text": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--method", "gptq"],
                                       "calib"),
    "bad argument": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--bits", "four"], "invalid int"),
    "unknown command": (["squash", "{root}/tiny-llama-0"], "invalid choice"),
    "sparsity above 1": (["prune", "{root}/tiny-llama-0", "-o", "{root}/o", "--method", "magnitude",
                          "--sparsity", "1.5"], "sparsity"),
    "YAML with a Python tag": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--config",
                                "{root}/python.yaml"], "python"),
    "broken YAML": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--config", "{root}/broken.yaml"],
                    "broken.yaml"),
    # texts
    "missing text": (["eval", "{root}/tiny-llama-0", "--text", "{root}/none.txt"], "no such text file"),
    "empty text": (["eval", "{root}/tiny-llama-0", "--text", "{root}/empty.txt"], "empty.txt is empty"),
    "binary eval text": (["eval", "{root}/tiny-llama-0", "--text", "{root}/nul.txt"],
                         "not a text file: a NUL byte at offset 7"),
    "binary calibration text": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--method", "imatrix",
                                 "--calib", "{root}/nul.txt"], "NUL byte at offset 7"),
    "undecodable text": (["eval", "{root}/tiny-llama-0", "--text", "{root}/latin.txt"],
                         "not UTF-8 text: byte 0xff at offset 17"),
    "non-UTF-8 jsonl": (["distill", "{root}/tiny-llama-0", "--teacher", "{root}/tiny-llama-0", "--data",
                         "{root}/latin.jsonl", "-o", "{root}/o"], "not UTF-8 text: byte 0xe9"),
    "jsonl without a text field": (["eval", "{root}/tiny-llama-0", "--text", "{root}/nofield.jsonl"], "text"),
    "jsonl that is not JSON": (["finetune", "{root}/tiny-llama-0", "--data", "{root}/notjson.jsonl", "-o",
                                "{root}/o"], "notjson.jsonl"),
    "text the tokenizer cannot read": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/o", "--method", "imatrix",
                                        "--calib", "{root}/linear_b.txt"], "unknown or partial characters"),
    "max windows 0": (["eval", "{root}/tiny-llama-0", "--text", "{root}/text.txt", "--max-windows", "0"],
                      "max_windows must be at least 1, not 0"),
    "eval settings before the model": (["eval", "{root}/huge.gguf", "--text", "{root}/text.txt", "--seq-len", "1"],
                                       "seq_len must be at least 2, not 1"),
    # outputs
    "output exists": (["convert", "{root}/tiny-llama-0", "-o", "{root}/user"], "already exists"),
    "output is a file": (["convert", "{root}/tiny-llama-0", "-o", "{root}/afile", "--overwrite"], "not a folder"),
    "overwrite the current folder": (["quantize", "{root}/tiny-llama-0", "-o", ".", "--overwrite"], "refusing"),
    "overwrite a user's folder": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/user", "--overwrite"],
                                  "did not write"),
    "overwrite the input": (["quantize", "{root}/tiny-llama-0", "-o", "{root}/tiny-llama-0", "--overwrite"],
                            "input of this run"),
    "overwrite the folder holding the input": (["prune", "{root}/tiny-llama-0", "-o", "{root}", "--overwrite",
                                                "--method", "magnitude", "--sparsity", "0.5"], "input of this run"),
    "export over a folder that is not a package": (["export", "coreml", "{root}/tiny-llama-0", "-o",
                                                    "{root}/notes.mlpackage", "--overwrite"], "not a Core ML package"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    prepare(root)
    return root


def status_of(argv) -> int:
    try:
        return main(argv)
    except SystemExit as done:  # argparse's own errors
        return done.code


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, world, monkeypatch, capsys):
    argv, pattern = CASES[name]
    monkeypatch.chdir(world / "cwd")
    monkeypatch.setenv("MLX_SLM_BACKEND", "numpy")
    before = snapshot(world)
    status = status_of([a.format(root=world) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, (name, err)
    assert len(err) == 1 and err[0].startswith("mlx-slm"), (name, err)
    assert re.search(pattern, err[0], re.IGNORECASE), (name, err[0])
    assert snapshot(world) == before, name


@pytest.mark.parametrize("name", ["missing model", "GGUF bad magic", "bits 7", "bad argument"])
def test_the_installed_command_prints_the_same_line(name, world):
    """The same cases through ``python -m mlx_slm`` (the real process: imports, argparse, exit status)."""
    argv, pattern = CASES[name]
    result = subprocess.run([sys.executable, "-m", "mlx_slm", *[a.format(root=world) for a in argv]],
                            capture_output=True, text=True, timeout=300, check=False, cwd=world / "cwd")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and re.search(pattern, lines[0], re.IGNORECASE), result.stderr


@pytest.fixture(scope="module")
def long_job(tmp_path_factory):
    """A quantize run of several seconds (gptq over thousands of calibration windows on a tiny model)."""
    root = tmp_path_factory.mktemp("long")
    model = tiny_model_folder(root)
    (root / "long.txt").write_text(sample_text(8000))
    return root, [sys.executable, "-m", "mlx_slm", "quantize", str(model), "-o", str(root / "out"), "--method",
                  "gptq", "--calib", str(root / "long.txt"), "--num-samples", "4000", "--seq-len", "64",
                  "--backend", "numpy"]


def listen_to_ctrl_c():
    """In the child: SIGINT at its default, even when the tests themselves run with it ignored (a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum, delay", [(signal.SIGINT, 0.4), (signal.SIGINT, 0.8), (signal.SIGINT, 1.5),
                                           (signal.SIGINT, 3.0), (signal.SIGTERM, 1.5)])
def test_ctrl_c_or_sigterm_at_any_moment_is_one_line_and_its_status(long_job, signum, delay):
    """From the package's first import (the interpreter's own start-up, tens of milliseconds, comes
    before any of our code and keeps Python's handler) through the heavy imports, the model load and
    the calibration: no traceback, no abort, nothing left beside the output; status 128 + the signal."""
    from mlx_slm.interrupt import MESSAGE, TERMINATED

    root, command = long_job
    before = snapshot(root)
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=listen_to_ctrl_c)
    time.sleep(delay)
    assert job.poll() is None, "the job ended before the signal; make it longer"
    job.send_signal(signum)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signum, err
    assert err.strip() == (MESSAGE if signum == signal.SIGINT else TERMINATED), err
    assert snapshot(root) == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_waits_for_a_deferred_section_and_removes_scratch(tmp_path, signum):
    """Ctrl-C or SIGTERM inside :func:`deferred` (the renames) takes effect after it; registered scratch is
    removed."""
    script = f"""
import os, signal, time
from pathlib import Path
from mlx_slm import interrupt
interrupt.install()
scratch = Path({str(tmp_path / "scratch")!r})
scratch.mkdir()
(scratch / "half.bin").write_bytes(b"x")
with interrupt.scratch(scratch):
    with interrupt.deferred():
        os.kill(os.getpid(), {int(signum)})
        time.sleep(0.2)
        print("renamed", flush=True)
    print("never", flush=True)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False,
                            preexec_fn=listen_to_ctrl_c)
    assert result.returncode == 128 + signum and result.stdout == "renamed\n", (result.stdout, result.stderr)
    word = "interrupted" if signum == signal.SIGINT else "terminated"
    assert result.stderr.strip() == f"mlx-slm: {word}; no partial output was left behind"
    assert not (tmp_path / "scratch").exists()
