"""Exporters: Core ML (``export_coreml``). coremltools is imported only when an export runs."""

from .coreml import export_coreml

__all__ = ["export_coreml"]
