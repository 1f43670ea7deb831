"""The README's examples run as written after the set-up: every file they read exists.

The set-up writes ``data/`` with ``examples/sample_files.py``; here it writes a fresh
folder, each file is read the way the commands read it, and every ``mlx-slm`` line of
the README's bash blocks is checked in order: each model, text, config or adapter it
reads is a sample file or the output (``-o``) of an earlier line.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READS = {"--calib", "--text", "--data", "--ref", "--teacher", "--config", "--eval-text", "--adapters", "--valid"}


def readme_commands() -> list[list[str]]:
    """Every ``mlx-slm`` command in the README's bash blocks, as argv lists, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("mlx-slm "):
                commands.append(shlex.split(line.replace("[", "").replace("]", ""))[1:])
    return commands


def inputs_and_output(argv: list[str]) -> tuple[list[str], str | None]:
    """The paths a command line reads (positional arguments and READS flags) and its ``-o`` output."""
    args = argv[2:] if argv[0] == "export" else argv[1:]
    reads, output, index = [], None, 0
    while index < len(args):
        arg = args[index]
        value = args[index + 1] if arg.startswith("-") and index + 1 < len(args) else None
        if value is not None and value.startswith("-"):
            value = None  # a switch such as --keep-best
        if arg in ("-o", "--output"):
            output = value
        elif arg in READS:
            reads.append(value)
        elif not arg.startswith("-"):
            reads.append(arg)
        index += 1 if value is None else 2
    return reads, output


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "sample_files.py"), str(folder)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert str(folder) in result.stdout
    return folder


def test_sample_files_read_as_the_commands_read_them(samples):
    from mlx_slm.data.text import read_text
    from mlx_slm.finetune.data import read_records
    from mlx_slm.io.gguf import describe_file
    from mlx_slm.qconfig import read_config_file

    train, held = read_text(samples / "kjv.txt"), read_text(samples / "heldout.txt")
    assert len(held) > 0.03 * (len(train) + len(held)) and held not in train  # held out: never in the training text
    assert len(read_text(samples / "notes.txt")) > 10_000
    records, shape = read_records(samples / "train.jsonl")
    assert len(records) >= 100 and shape == "completions"
    assert set(read_config_file(samples / "layers.yaml")) == {"by_type", "by_name"}
    assert "Q4_1" in describe_file(samples / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_every_file_the_readme_commands_read_exists(samples):
    commands = readme_commands()
    assert len(commands) >= 15, "the README's bash blocks were not found"
    available = {p.name for p in samples.iterdir()}
    for argv in commands:
        reads, output = inputs_and_output(argv)
        missing = [path for path in reads if path not in available]
        assert not missing, f"`mlx-slm {' '.join(argv)}` reads {missing}: neither a sample file nor made earlier"
        if output:
            available.add(output)
