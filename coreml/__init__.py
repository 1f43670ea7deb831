"""mlx_slm.coreml: the Core ML reference interpreter (this top-level folder, mapped into the package)."""
