"""mlx_slm: make small language models smaller and ship them to Apple devices.

    model, tokenizer = mlx_slm.load("SmolLM2-135M-Instruct.Q4_1.gguf")
    model = mlx_slm.quantize(model, mlx_slm.QuantizeConfig(method="gptq", bits=4),
                             mlx_slm.Calibration("kjv.txt", tokenizer))
    mlx_slm.save(model, tokenizer, "smollm2-4bit")
    print(mlx_slm.evaluate(model, tokenizer, text="notes.txt"))
"""

from . import _blas, _heap, interrupt

if interrupt.is_command():
    interrupt.install()  # Ctrl-C: one line and status 130 from here on, even during the imports below
_blas.preload()  # must run before anything imports mlx
_heap.keep_freed()  # before the first large array

from . import stats  # noqa: E402
from .data.windows import Calibration  # noqa: E402
from .errors import MLXRequiredError, SLMError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .loading import load  # noqa: E402
from .model_access import model_config  # noqa: E402
from .quant.config import QuantizeConfig  # noqa: E402
from .quantize import quantize  # noqa: E402
from .saving import save  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load", "save", "quantize", "QuantizeConfig", "Calibration", "evaluate", "export_coreai", "export_coreml",
           "export_gguf", "model_config", "stats", "SLMError", "MLXRequiredError"]


def __getattr__(name):
    """``export_coreai``, ``export_coreml`` and ``export_gguf`` are imported on first use (coreai-core and
    coremltools are optional)."""
    if name == "export_coreai":
        from .export import export_coreai

        return export_coreai
    if name == "export_coreml":
        from .export import export_coreml

        return export_coreml
    if name == "export_gguf":
        from .export.gguf import export_gguf

        return export_gguf
    raise AttributeError(f"module 'mlx_slm' has no attribute {name!r}")
