"""What the benchmark scripts share: the model folder and texts they measure on, peak memory, the
quality table, and the export formats with their package sizes. Scripts import it as ``_common``
(run from benchmarks/, or with it on the path, like every script here)."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import mlx_slm
from mlx_slm.data.corpora import local_text
from mlx_slm.io.packaged import smollm2_gguf

# format name -> mlx_slm.quantize keyword arguments (None: the float16 model as loaded); any "q<bits>g<group>"
# is affine too.
FORMATS = {"fp16": None, "lut4g8": {"format": "lut", "bits": 4, "group_size": 8},
           "lut3g8": {"format": "lut", "bits": 3, "group_size": 8}, "ternary": {"format": "ternary", "group_size": 0}}
AFFINE = re.compile(r"q(\d+)g(\d+)")


def quantize_options(name: str):
    """The ``mlx_slm.quantize`` keyword arguments of format ``name`` (None for float16)."""
    if name in FORMATS:
        return FORMATS[name]
    match = AFFINE.fullmatch(name)
    if match is None:
        raise SystemExit(f"unknown format {name!r}: use fp16, q<bits>g<group> or one of {sorted(FORMATS)}")
    return {"bits": int(match[1]), "group_size": int(match[2])}


def package_bytes(package: Path) -> int:
    return sum(f.stat().st_size for f in package.rglob("*") if f.is_file())


def package_bpw(package: Path) -> float:
    """Bits per matrix weight the package stores, from the manifest's per-layer bytes and shapes."""
    layers = json.loads(package.with_suffix(".json").read_text())["layers"]
    return 8 * sum(layer["bytes"] for layer in layers) / sum(layer["shape"][0] * layer["shape"][1]
                                                            for layer in layers)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the starting level while the ``with`` block runs (Linux)."""

    def __enter__(self):
        self.start = self.peak = resident_bytes()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while self.running:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def grown_bytes(self) -> int:
        return self.peak - self.start


def earlier_rows(path: Path, settings: dict, parser) -> list[dict]:
    """``--resume``: the rows of an earlier run written to ``path`` (none without the file). Its
    settings must be ``settings`` (``parser``'s options by their names), a setting it did not record
    counting as the parser's default (an option added since); otherwise the run exits with status 2
    naming what differs, instead of measuring anew and replacing rows it was asked to keep."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    theirs = {**{key: parser.get_default(key) for key in settings}, **earlier.get("settings", {})}
    differ = sorted(key for key in theirs.keys() | settings.keys() if theirs.get(key, "unset") !=
                    settings.get(key, "unset"))
    if differ:
        changes = ", ".join(f"{key} {theirs.get(key, 'unset')} -> {settings.get(key, 'unset')}" for key in differ)
        print(f"--resume: {path} was measured with other settings ({changes}); give another --out, or leave "
              "out --resume to measure everything again", file=sys.stderr)
        raise SystemExit(2)
    return earlier["rows"]


def quality_table(rows: list[dict]) -> str:
    header = (f"{'method':<16}{'bits':>5}{'group':>6}{'bpw':>7}{'float':>6}{'PPL':>12}{'KL':>9}{'top-1':>8}"
              f"{'quant s':>9}{'peak MB':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:  # a baseline that could not run
            lines.append(f"{r['method']:<16}{r['bits'] or '-':>5}{r['group_size'] or '-':>6}   not run: {r['error']}")
            continue
        kld = "-" if r.get("kld") is None else f"{r['kld']:.4f}"
        top1 = "-" if r.get("top1") is None else f"{r['top1']:.1%}"
        quant_s = "-" if r["quant_seconds"] is None else f"{r['quant_seconds']:.0f}"
        peak = "-" if r["quant_peak_mb"] is None else f"{r['quant_peak_mb']:.0f}"
        lines.append(f"{r['method']:<16}{r['bits'] or '-':>5}{r['group_size'] or '-':>6}{r['bpw']:>7.2f}"
                     f"{r.get('float_layers', 0):>6}{r['ppl']:>12.3f}{kld:>9}{top1:>8}{quant_s:>9}{peak:>9}")
    return "\n".join(lines)


def write_texts(out: Path) -> dict:
    """Write OUT/calib.txt and OUT/eval.txt from the local corpora; return purpose -> source name."""
    texts = {}
    for purpose in ("calib", "eval"):
        text, source = local_text(purpose)
        (out / f"{purpose}.txt").write_text(text)
        texts[purpose] = source
    return texts


def source_folder(out: Path, model_arg) -> Path:
    """A float16 MLX folder of the model (converted from the GGUF once)."""
    if model_arg and Path(model_arg).is_dir():
        return Path(model_arg)
    folder = out / "fp16"
    if not (folder / "config.json").is_file():
        model, tokenizer = mlx_slm.load(model_arg or smollm2_gguf(), progress=False)
        mlx_slm.save(model, tokenizer, folder, overwrite=True)
    return folder
