"""Exporters: Core ML (``export_coreml``) and Core AI (``export_coreai``). coremltools and coreai-core
are imported only when an export runs."""

from .coreai import export_coreai
from .coreml import export_coreml

__all__ = ["export_coreai", "export_coreml"]
