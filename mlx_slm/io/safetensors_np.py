"""safetensors files as numpy arrays, bfloat16 included.

The `safetensors` package's numpy API has no bfloat16 (numpy lacks the type),
so this small reader/writer maps BF16 to ml_dtypes' bfloat16. The file layout
is: 8-byte little-endian header length, a JSON header, then raw tensor bytes.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import SLMError
from ..formats.dtypes import bfloat16

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": bfloat16,
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def read_header(path: Path) -> tuple[dict, int]:
    """Return ``(header dict, byte offset of the data section)``."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SLMError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > size - 8:
            raise SLMError(f"{path} is truncated or not a safetensors file")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SLMError(f"{path} has a corrupt safetensors header") from None
    return header, 8 + length


def load(path) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file, memory-mapped read-only (see :func:`release`)."""
    path = Path(path)
    header, start = read_header(path)
    with open(path, "rb") as f:
        data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in DTYPES:
            raise SLMError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
        begin, end = (start + int(o) for o in info["data_offsets"])
        if end > data.size:
            raise SLMError(f"{path} is truncated: tensor {name} runs past the end of the file")
        dtype = DTYPES[info["dtype"]]
        tensors[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return tensors


def mapping(array: np.ndarray) -> tuple:
    """``(mmap, first, end)``: the mmap under ``array`` and the byte range ``array`` spans in it, if
    ``array`` is a view of a file :func:`load` mapped; ``(None, 0, 0)`` for any other (MLX ones too)."""
    if not isinstance(array, np.ndarray):
        return None, 0, 0
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    mapped = getattr(root.base, "obj", None)  # np.frombuffer's base: a memoryview of the mmap
    if not isinstance(mapped, mmap.mmap):
        return None, 0, 0
    low, high = np.lib.array_utils.byte_bounds(array)
    return mapped, low - root.ctypes.data, high - root.ctypes.data


def release(array: np.ndarray) -> None:
    """Unmap the pages under ``array`` if it is a view of a file :func:`load` mapped (else nothing).

    The file stays mapped: touched again, the pages are read back from it. A reader that converts
    each tensor once (the exporters) calls this after each, so the loaded model's pages do not add
    up in its memory beside what it builds."""
    mapped, first, end = mapping(array)
    if mapped is None or end == first or not hasattr(mmap, "MADV_DONTNEED"):
        return
    begin = first // mmap.PAGESIZE * mmap.PAGESIZE
    mapped.madvise(mmap.MADV_DONTNEED, begin, min(end, len(mapped)) - begin)


def spill(tensors: dict[str, np.ndarray], read=None) -> dict:
    """``tensors`` written to a temporary safetensors file and read back by ``read(path)`` (default
    :func:`load`: memory-mapped; ``mx.load`` gives lazy MLX arrays), the file unlinked at once: its
    data stays readable through the open mapping or reader and the disk space goes with the last
    array. A pass that rewrites a large model keeps what it wrote on disk, not in memory. A folder
    without room for them fails with one :class:`SLMError` that says how to choose another."""
    folder = tempfile.gettempdir()
    try:
        handle, name = tempfile.mkstemp(suffix=".safetensors", prefix="mlx_slm-")
        os.close(handle)
    except OSError as err:
        raise SLMError(f"cannot create a temporary file in {folder} ({err.strerror}); set TMPDIR to a "
                       "writable folder") from err
    try:
        save(name, tensors)
        return (read or load)(name)
    except OSError as err:
        size = sum(array.nbytes for array in tensors.values())
        raise SLMError(f"cannot keep {size / 1e6:.0f} MB of intermediate results in {folder} ({err.strerror}); "
                       "set TMPDIR to a folder with more room") from err
    finally:
        os.unlink(name)


def check_spill_room(nbytes: int) -> None:
    """Before a long pass that :func:`spill` s about ``nbytes`` in all: one :class:`SLMError` now if the
    temporary folder has less free, instead of a failure hours in."""
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise SLMError(f"this pass keeps about {nbytes / 1e6:.0f} MB of intermediate results in {folder}, which "
                       f"has {free / 1e6:.0f} MB free; set TMPDIR to a folder with more room")


def save(path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write tensors (any dtype in DTYPES) to one safetensors file."""
    layout = {name: (array.dtype, array.shape) for name, array in tensors.items()}
    save_stream(path, layout, ((name, tensors[name]) for name in sorted(tensors)), metadata)


def save_stream(path, layout: dict, tensors: Iterable, metadata: dict | None = None) -> None:
    """Write one safetensors file from tensors that arrive one at a time, so a caller holds one.

    layout: name -> (numpy dtype, shape), every tensor the file holds; the header is written from it.
    tensors: ``(name, array)`` pairs in sorted name order, each matching its layout entry; a generator's
    code after its ``yield`` runs once that array is written (to let it go, say).
    """
    header, offset = {}, 0
    for name in sorted(layout):
        dtype, shape = np.dtype(layout[name][0]), tuple(int(n) for n in layout[name][1])
        if dtype not in NAMES:
            raise SLMError(f"cannot store tensor {name} of dtype {dtype} in safetensors")
        size = dtype.itemsize * math.prod(shape)
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    expected = iter(sorted(layout))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, array in tensors:
            if name != next(expected, None) or array.dtype != np.dtype(layout[name][0]) \
                    or tuple(array.shape) != tuple(layout[name][1]):
                raise ValueError(f"tensor {name} arrived out of order or unlike its layout")
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    if next(expected, None) is not None:
        raise ValueError(f"{path}: fewer tensors arrived than the layout lists")
