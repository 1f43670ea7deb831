"""What the Core ML and Core AI exports share: the request checks, the output path rules and
the staged, all-or-nothing write of a package folder beside its manifest and tokenizer files."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import SLMError
from ..interrupt import deferred, scratch
from ..io.atomic import refuse_inputs
from ..models.numpy_llama import SUPPORTED
from .gemma3 import GEMMA3_TYPES

PRECISIONS = ("float16", "float32")
DEFAULT_MAX_CONTEXT = 2048
# package suffix -> (a file every such package holds, what the package is called)
PACKAGE_KINDS = {".mlpackage": ("Manifest.json", "Core ML package"),
                 ".aimodel": ("metadata.json", "Core AI model")}


def resolve_max_context(config: dict, max_context: int | None) -> int:
    """The requested KV-cache length, by default min(2048, max_position_embeddings)."""
    if max_context is not None:
        return max_context
    return min(DEFAULT_MAX_CONTEXT, int(config.get("max_position_embeddings") or DEFAULT_MAX_CONTEXT))


def check_model_type(config: dict, kind: str) -> None:
    """SLMError unless the model is one both exports build programs for: the Llama family or Gemma 3."""
    model_type = config.get("model_type")
    if model_type not in (*SUPPORTED, *GEMMA3_TYPES):
        raise SLMError(f"{kind} export supports the Llama family ({', '.join(SUPPORTED)}) and Gemma 3 "
                       f"({', '.join(GEMMA3_TYPES)}), not model type {model_type!r}")


def check_request(config: dict, max_context: int, compute_precision: str) -> None:
    limit = config.get("max_position_embeddings")
    if not isinstance(max_context, int) or max_context < 1:
        raise SLMError(f"max_context must be a positive integer, not {max_context!r}")
    if limit is not None and max_context > int(limit):
        raise SLMError(f"max_context {max_context} is beyond the model's max_position_embeddings {limit}")
    if compute_precision not in PRECISIONS:
        raise SLMError(f"compute_precision must be one of {PRECISIONS}, not {compute_precision!r}")


def package_path(out_path, suffix: str = ".mlpackage") -> Path:
    path = Path(out_path).expanduser().resolve()
    if path.suffix != suffix:
        raise SLMError(f"the output must end in {suffix}, not {path.name!r}")
    return path


def refuse_existing(package: Path, overwrite: bool, inputs=()) -> None:
    """Refuse to replace a package or manifest unless asked, and anything that is not one.

    Neither the package nor its manifest may be (or hold) an input, and the package's
    folder may not be inside a model folder this run reads: the tokenizer files written
    beside the package would replace the input's. A folder that merely holds the input
    model (``export coreml m -o Smol.mlpackage`` run beside ``m``) is fine.
    """
    for target in (package, package.with_suffix(".json")):
        refuse_inputs(target, inputs)
    for source in (Path(p).expanduser().resolve() for p in inputs if p is not None):
        if source.is_dir() and (source == package.parent or source in package.parent.parents):
            raise SLMError(f"{package} would be written inside the input model {source}, beside files of its own; "
                           "write the package elsewhere")
    for target in (package, package.with_suffix(".json")):
        if target.exists() and not overwrite:
            raise SLMError(f"{target} already exists (pass --overwrite / overwrite=True to replace it)")
    marker, kind = PACKAGE_KINDS[package.suffix]
    if package.exists() and not (package / marker).is_file():
        raise SLMError(f"refusing to replace {package}: it is not a {kind}")
    if package.with_suffix(".json").is_dir():
        raise SLMError(f"{package.with_suffix('.json')} is a folder, not a manifest")


@contextmanager
def staged_outputs(package: Path, overwrite: bool, inputs=()):
    """Yield a temporary folder; on success move its entries beside ``package``, the package last.

    Nothing is moved if the body fails, so an interrupted export leaves no
    partial package or manifest. Tokenizer files beside the package are replaced
    only with ``overwrite``.
    """
    refuse_existing(package, overwrite, inputs)
    package.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.name}.partial-{os.getpid()}-", dir=package.parent))
    try:
        with scratch(staging):
            yield staging
            refuse_existing(package, overwrite, inputs)
            entries = sorted(staging.iterdir(), key=lambda entry: entry.name == package.name)
            clashes = [entry.name for entry in entries if (package.parent / entry.name).exists()]
            if clashes and not overwrite:
                raise SLMError(f"{package.parent / clashes[0]} already exists (pass --overwrite to replace it)")
            with deferred():
                for entry in entries:
                    target = package.parent / entry.name
                    if target.is_dir():  # an old package: set it aside, so the new one replaces it in one rename
                        target.rename(staging / f".old-{entry.name}")
                    os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
