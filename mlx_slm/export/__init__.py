"""Exporters: Core ML (``export_coreml``) and Core AI (``export_coreai``). coremltools and coreai-core
are imported only when an export runs."""

from .coreai import export_coreai
from .coreml import export_coreml
from .coreml_options import CoreMLOptions

__all__ = ["CoreMLOptions", "export_coreai", "export_coreml"]
