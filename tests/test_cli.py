"""The mlx-slm command: help, the main flow, quiet logs (bad inputs: test_bad_inputs.py)."""

import json
import subprocess
import sys

import pytest
from helpers import tiny_config, tiny_model_folder, tiny_weights
from test_gguf import write_tiny_gguf

from mlx_slm.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "mlx_slm", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("command", ["convert", "quantize", "eval", "info"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--backend" in capsys.readouterr().out


def test_convert_quantize_eval_info(tmp_path, tiny_text, capsys):
    config = tiny_config()
    write_tiny_gguf(tmp_path / "tiny.gguf", config, tiny_weights(config), quant="Q8_0")
    assert main(["convert", str(tmp_path / "tiny.gguf"), "-o", str(tmp_path / "f16")]) == 0
    assert main(["quantize", str(tmp_path / "f16"), "-o", str(tmp_path / "q3"), "--bits", "3"]) == 0
    assert main(["eval", str(tmp_path / "q3"), "--text", str(tiny_text), "--ref", str(tmp_path / "f16"),
                 "--seq-len", "64", "--max-windows", "2", "--decode-tokens", "2",
                 "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    for key in ("ppl", "kld", "top1", "bpw", "size_bytes", "tokens_per_s", "peak_memory_bytes"):
        assert report[key] is not None, key
    assert report["bpw"] == pytest.approx(3.5) and report["kld"] > 0
    assert main(["info", str(tmp_path / "q3")]) == 0
    out = capsys.readouterr().out
    assert "affine 3-bit, group 64" in out and "3.500" in out
    assert main(["info", str(tmp_path / "tiny.gguf")]) == 0  # the file's own format, then the loaded model
    out = capsys.readouterr().out
    assert "GGUF, tensors Q8_0 x" in out and "8.500 bits per matrix weight as stored" in out, out
    assert "format            float" in out


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path, tiny_text):
    """A run whose output goes to a log (a pipe here) prints no tqdm bars: no carriage-return noise."""
    folder = tiny_model_folder(tmp_path)
    result = run("quantize", folder, "-o", tmp_path / "q", "--method", "imatrix", "--calib", tiny_text,
                 "--num-samples", "4", "--seq-len", "32", "--backend", "numpy")
    assert result.returncode == 0, result.stderr
    assert "imatrix blocks" not in result.stderr and "\r" not in result.stderr, result.stderr
    assert "wrote" in result.stdout
