"""``export_coreai``: a model -> ``Name.aimodel`` (Core AI, stateful KV cache) + ``Name.json`` + tokenizer,
and :func:`open_package` / :func:`compare_greedy`, which run a saved package with Apple's Core AI runtime
(coreai-core ships a CPU runtime for Linux as well as macOS).

The program is authored directly with coreai-core from the model's own weights (no PyTorch), see
:mod:`.coreai_llama` (graph and contract), :mod:`.coreai_gemma3` (Gemma 3's differences) and
:mod:`.coreai_weights` (compressed weights). coreai-core is imported only when this runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import numpy as np

from ..backend import backend_of
from ..errors import SLMError
from ..loading import model_source
from ..model_access import model_config
from ..models.numpy_llama import SUPPORTED
from .coreai_gemma3 import Gemma3Graph
from .coreai_llama import INPUT_IDS, KEY_CACHE, LOGITS, POSITION_IDS, VALUE_CACHE, LlamaGraph
from .gemma3 import GEMMA3_TYPES, program_config, program_weights
from .manifest import build_manifest
from .package import check_model_type, check_request, package_path, refuse_existing, resolve_max_context, staged_outputs

INSTALL = "pip install 'mlx-slm[coreai]'"
GRAPHS = {**{model_type: LlamaGraph for model_type in SUPPORTED},
          **{model_type: Gemma3Graph for model_type in GEMMA3_TYPES}}


def import_coreai():
    """``coreai.authoring`` (coreai-core), or an SLMError naming the install command."""
    try:
        import coreai.authoring
    except ImportError:
        raise SLMError(f"Core AI export needs coreai-core (Python 3.11+, numpy 2.3+): {INSTALL}") from None
    return coreai.authoring


def export_coreai(model, tokenizer, out_path, max_context: int | None = None,
                  compute_precision: str = "float16", overwrite: bool = False) -> Path:
    """Write ``Name.aimodel``, ``Name.json`` and the tokenizer files into out_path's folder.

    model: from :func:`mlx_slm.load` (MLX or numpy backend), float or quantized (affine, lut, ternary);
    Llama family, or Gemma 3 (gemma3_text, or a gemma3 model's text model; MLX backend only).
    out_path: ``.../Name.aimodel``. max_context: the longest context the program serves (its RoPE
    tables; default min(2048, max_position_embeddings)); the runner sizes the
    KV-cache states. compute_precision: "float16" (activations and KV cache; RMSNorm statistics
    in float32) or "float32"; weights decode to float32 either way, logits are float16.
    Returns the package path.
    """
    config = model_config(model)
    check_model_type(config, "Core AI")
    text_config = program_config(model, config)
    max_context = resolve_max_context(text_config, max_context)
    check_request(text_config, max_context, compute_precision)
    package = package_path(out_path, ".aimodel")
    inputs = [model_source(model)]
    refuse_existing(package, overwrite, inputs)  # before the work, and again before writing
    ops = import_coreai()
    from .. import __version__

    weights = program_weights(model, config)
    graph = GRAPHS[config["model_type"]](ops, text_config, weights, max_context, compute_precision)
    program = graph.program()
    from coreai.runtime import AIModelAssetMetadata

    metadata = AIModelAssetMetadata()
    metadata.model_description = f"{config.get('model_type')} language model exported by mlx_slm {__version__}"
    layers = [graph.layers[path] for path in sorted(graph.layers)]
    manifest = build_manifest(tokenizer, config, max_context, layers, __version__)
    with staged_outputs(package, overwrite, inputs) as staging:
        program.save_asset(staging / package.name, metadata=metadata)
        (staging / package.with_suffix(".json").name).write_text(json.dumps(manifest, indent=2))
        tokenizer.save_pretrained(str(staging))
    return package


class Runner:
    """A loaded package's ``main`` with its KV-cache states (allocated for ``max_context`` tokens):
    each call appends tokens and returns their logits."""

    def __init__(self, function, max_context: int):
        self.function, self.max_context, self.past = function, max_context, 0
        self.states = {}
        for name in (KEY_CACHE, VALUE_CACHE):
            state = function.desc.state_descriptor(name)
            shape = [max_context if size < 0 else size for size in state.shape]
            self.states[name] = np.zeros(shape, np.dtype(state.dtype))
        from coreai.runtime import NDArray

        self.states = {name: NDArray(array) for name, array in self.states.items()}

    async def __call__(self, token_ids) -> np.ndarray:
        """token_ids [T] -> logits float32 [1, T, vocab]."""
        from coreai.runtime import NDArray

        ids = np.asarray(token_ids, np.int32).reshape(1, -1)
        if self.past + ids.shape[1] > self.max_context:
            raise SLMError(f"{self.past + ids.shape[1]} tokens do not fit the {self.max_context}-token KV cache")
        positions = np.arange(self.past + ids.shape[1], dtype=np.int32)[None]
        out = await self.function({INPUT_IDS: NDArray(ids), POSITION_IDS: NDArray(positions)}, state=self.states)
        self.past += ids.shape[1]
        return out[LOGITS].numpy().astype(np.float32)


@asynccontextmanager
async def open_package(package, max_context: int | None = None):
    """Yield a :class:`Runner` for a saved ``.aimodel`` (compiled for this machine on entry);
    max_context defaults to the manifest's."""
    import_coreai()
    from coreai.authoring import AIModelAsset

    package = Path(package)
    if max_context is None:
        max_context = json.loads(package.with_suffix(".json").read_text())["max_context"]
    async with AIModelAsset.load(package).executable() as loaded:
        yield Runner(loaded.load_function("main"), max_context)


class MLXSteps:
    """An mlx-lm model as :func:`compare_greedy` calls a model: ``make_cache()``, and (ids int32 [1, T], cache)
    -> float32 logits [1, T, vocab] as numpy."""

    def __init__(self, model):
        self.model = model

    def make_cache(self):
        from mlx_lm.models.cache import make_prompt_cache

        return make_prompt_cache(self.model)

    def __call__(self, ids: np.ndarray, cache) -> np.ndarray:
        import mlx.core as mx

        return np.array(self.model(mx.array(ids), cache=cache).astype(mx.float32))


def compare_greedy(package, model, prompt, steps: int) -> dict:
    """Prefill ``prompt`` then ``steps`` greedy steps fed with the model's token, through the package
    (Apple's runtime) and through ``model`` (``model.make_cache()``, ``model(ids, cache)``). An MLX model
    computes in float32 with its exact weights on a CPU (:func:`mlx_slm.runtime.fast_cpu`), like the
    numpy model does.

    Returns package_tokens, model_tokens, max_dlogit (over every position) and decode_s (the
    package's seconds per decode step).
    """
    with ExitStack() as stack:
        if backend_of(model) == "mlx":
            from ..runtime import fast_cpu

            stack.enter_context(fast_cpu(model))
            model = MLXSteps(model)
        return asyncio.run(greedy_steps(package, model, prompt, steps))


async def greedy_steps(package, model, prompt, steps: int) -> dict:
    """:func:`compare_greedy`'s loop; ``model`` as a numpy model is called."""
    async with open_package(package) as runner:
        cache = model.make_cache()
        ours, theirs = await runner(prompt), model(np.array([prompt], np.int32), cache)
        result = {"package_tokens": [], "model_tokens": [], "max_dlogit": 0.0, "decode_s": 0.0}
        for step in range(steps + 1):
            result["max_dlogit"] = max(result["max_dlogit"], float(np.abs(ours - theirs).max()))
            result["package_tokens"].append(int(ours[0, -1].argmax()))
            result["model_tokens"].append(int(theirs[0, -1].argmax()))
            if step == steps:
                break
            start = time.perf_counter()
            ours = await runner([result["model_tokens"][-1]])
            result["decode_s"] += (time.perf_counter() - start) / steps
            theirs = model(np.array([[result["model_tokens"][-1]]], np.int32), cache)
        return result
