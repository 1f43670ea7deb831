"""numpy dtypes MLX has and numpy lacks (bfloat16, through ml_dtypes), and numpy arrays as exact MLX arrays."""

from __future__ import annotations

import ml_dtypes
import numpy as np

bfloat16 = np.dtype(ml_dtypes.bfloat16)

FLOAT_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": bfloat16}


def as_float32(x: np.ndarray) -> np.ndarray:
    """Exact float32 view of a float16/bfloat16/float32 array (no copy if already f32)."""
    return np.asarray(x, dtype=np.float32)


def round_to(x: np.ndarray, dtype) -> np.ndarray:
    """Round float32 values to ``dtype`` with round-to-nearest-even, as a C++ cast does."""
    return np.asarray(x, dtype=np.float32).astype(dtype)


def mlx_array(values: np.ndarray):
    """An MLX array holding ``values`` exactly. bfloat16 goes as its bits (uint16 viewed as MLX's
    bfloat16): every bit pattern survives (a float32 round trip changes NaN payloads), and no float32
    copy, twice the tensor's size, waits in a lazy cast until something evaluates it. An MLX array
    (e.g. one read lazily from a file) is returned as it is."""
    import mlx.core as mx

    if isinstance(values, mx.array):
        return values
    if values.dtype.name == "bfloat16":
        return mx.array(values.view(np.uint16)).view(mx.bfloat16)
    return mx.array(values)


def exact_numpy(values) -> np.ndarray:
    """A numpy array holding an MLX array's values exactly (the inverse of :func:`mlx_array`):
    bfloat16 comes over as its bits, viewed as ml_dtypes' bfloat16."""
    import mlx.core as mx

    if values.dtype == mx.bfloat16:
        return np.array(values.view(mx.uint16)).view(bfloat16)
    return np.array(values)
