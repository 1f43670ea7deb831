"""Run a saved ``.mlpackage`` off the Mac: its MIL program, op by op, in numpy.

The program and its weight blobs are read back through coremltools' own proto
loader (``coremltools.converters.mil.frontend.milproto.load``), so what runs
here is what the package holds, not what the exporter meant to write.

Numerics: float ops compute in float32 and round their result to the dtype the
program declares (fp16 for an fp16 op), which is how an fp16 Core ML program
stores every intermediate. States (the KV cache) persist across
:meth:`MILInterpreter.predict` calls until :meth:`MILInterpreter.reset`.
An op this module does not know raises :class:`UnsupportedOpError`, and an input of a shape the package
does not declare (outside its ranges, not one of its enumerated shapes) a ValueError, as Core ML would.
:func:`compare_greedy` runs a prompt and greedy steps through a package and a model side by side,
with the masks of :func:`causal_mask` or :func:`zero_mask` (swift-transformers' requests), or, for an
enumerated package, in chunks of its query lengths (:func:`chunked_calls`).

    interpreter = MILInterpreter("Model.mlpackage")
    logits = interpreter.predict({"inputIds": ids, "causalMask": mask})["logits"]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUMPY_DTYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int8": np.int8, "uint8": np.uint8,
                "bool": np.bool_, "int64": np.int64, "int16": np.int16, "uint16": np.uint16}

SUB_BYTE = ("uint1", "uint2", "uint3", "uint4", "uint6", "int4")


class UnsupportedOpError(NotImplementedError):
    """The program uses an op (or an op option) the interpreter does not implement."""


def load_program(package):
    """The ``main`` MIL function of a saved .mlpackage, weights loaded from its blob file."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    package = Path(package)
    spec = ct.utils.load_spec(str(package))
    weights = package / "Data" / "com.apple.CoreML" / "weights"
    return load(spec, spec.specificationVersion, file_weights_dir=str(weights)).functions["main"]


def dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def held_as(value, declared: str) -> np.ndarray:
    """A result stored as the program declares it: float types as float32 values rounded to ``declared``."""
    if declared == "string" or declared in SUB_BYTE:
        return value  # op parameters, and compressed codes (uint8 / int8 arrays of small values)
    value = np.asarray(value)
    if declared in ("fp16", "fp32"):
        return value.astype(NUMPY_DTYPES[declared]).astype(np.float32)
    if declared not in NUMPY_DTYPES:
        raise UnsupportedOpError(f"result dtype {declared}")
    return value.astype(NUMPY_DTYPES[declared])


# ---- op semantics (MIL iOS 18), each: (inputs dict of numpy values) -> result ----

def index_window(shape, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """The numpy index of MIL's slice_by_index / slice_update arguments."""
    window = []
    for axis, size in enumerate(shape):
        start = 0 if begin_mask is not None and begin_mask[axis] else int(begin[axis])
        if squeeze_mask is not None and squeeze_mask[axis]:
            window.append(start)
            continue
        stop = size if end_mask is not None and end_mask[axis] else int(end[axis])
        window.append(slice(start, stop, 1 if stride is None else int(stride[axis])))
    return tuple(window)


def window_args(a):
    return {k: a.get(k) for k in ("stride", "begin_mask", "end_mask", "squeeze_mask")}


def slice_by_index(a):
    return a["x"][index_window(a["x"].shape, a["begin"], a["end"], **window_args(a))]


def slice_update(a):
    out = a["x"].copy()
    window = index_window(out.shape, a["begin"], a["end"], **window_args(a))
    out[window] = a["update"].reshape(out[window].shape)
    return out


def reshape(a):
    shape = [int(d) if d != 0 else a["x"].shape[i] for i, d in enumerate(a["shape"])]
    return a["x"].reshape(shape)


def gather(a):
    if a.get("batch_dims", 0) != 0:
        raise UnsupportedOpError("gather with batch_dims")
    return np.take(a["x"], a["indices"], axis=int(a.get("axis", 0)))


def linear(a):
    out = a["x"] @ a["weight"].T
    return out if a.get("bias") is None else out + a["bias"]


def matmul(a):
    x = np.swapaxes(a["x"], -1, -2) if a.get("transpose_x") else a["x"]
    y = np.swapaxes(a["y"], -1, -2) if a.get("transpose_y") else a["y"]
    return x @ y


def softmax_last(x):
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def scaled_dot_product_attention(a):
    """softmax(Q K^T / sqrt(E) + mask) V; a bool mask marks allowed positions."""
    query, key = a["query"], a["key"]
    scores = (query @ np.swapaxes(key, -1, -2)) / np.sqrt(np.float32(query.shape[-1]))
    mask = a.get("attn_mask")
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    return softmax_last(scores) @ a["value"]


def blockwise_shift_scale(a):
    """constexpr_blockwise_shift_scale: scale * (data - offset), scale/offset repeated per block."""
    data = a["data"].astype(np.float32)
    scale, offset = a["scale"].astype(np.float32), a.get("offset")
    blocks = [d // s for d, s in zip(data.shape, scale.shape)]
    for axis, block in enumerate(blocks):
        scale = np.repeat(scale, block, axis=axis)
        offset = None if offset is None else np.repeat(offset, block, axis=axis)
    return scale * (data - (0 if offset is None else offset.astype(np.float32)))


def lut_to_dense(a):
    """constexpr_lut_to_dense, scalar tables (vector size 1): lut[block..., index, 0]."""
    indices, lut = a["indices"].astype(np.int64), a["lut"]
    if lut.shape[-1] != 1:
        raise UnsupportedOpError("constexpr_lut_to_dense with vector palettes")
    rank = indices.ndim
    block_index = tuple(np.arange(size)[(slice(None),) + (None,) * (rank - 1 - axis)] // (size // lut.shape[axis])
                        for axis, size in enumerate(indices.shape))
    return lut[(*block_index, indices, 0)]


def gelu(a):
    """gelu, tanh approximation only: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if a["mode"] != "TANH_APPROXIMATION":
        raise UnsupportedOpError(f"gelu mode {a['mode']}")
    x = a["x"]
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi).astype(np.float32) * (x + 0.044715 * x**3)))


def range_1d(a):
    """[start, start + step, ... < end) in the inputs' type (int32 or float)."""
    return np.arange(a["start"], a["end"], a["step"]).astype(np.result_type(a["start"], a["end"], a["step"]))


def concat(a):
    if a.get("interleave"):
        raise UnsupportedOpError("concat with interleave")
    return np.concatenate([np.atleast_1d(v) for v in a["values"]], axis=int(a["axis"]))


def cumsum(a):
    """Running sums along ``axis``; exclusive: each element's sum leaves itself out."""
    if a.get("reverse"):
        raise UnsupportedOpError("cumsum with reverse")
    x = a["x"]
    total = np.cumsum(x, axis=int(a.get("axis", 0))).astype(x.dtype)
    return total - x if a.get("exclusive") else total


def reduce(function):
    return lambda a: function(a["x"], axis=tuple(int(i) for i in a["axes"]), keepdims=bool(a.get("keep_dims", False)))


def binary(function):
    return lambda a: function(a["x"], a["y"])


OPS = {
    "add": binary(np.add), "sub": binary(np.subtract), "mul": binary(np.multiply), "real_div": binary(np.divide),
    "pow": binary(np.power), "maximum": binary(np.maximum), "minimum": binary(np.minimum),
    "greater_equal": binary(np.greater_equal), "greater": binary(np.greater), "less": binary(np.less),
    "less_equal": binary(np.less_equal), "equal": binary(np.equal),
    "select": lambda a: np.where(a["cond"], a["a"], a["b"]),
    "rsqrt": lambda a: 1.0 / np.sqrt(a["x"] + a.get("epsilon", 1e-12)),
    "sqrt": lambda a: np.sqrt(a["x"]), "exp": lambda a: np.exp(a["x"]),
    "silu": lambda a: a["x"] / (1.0 + np.exp(-a["x"])),
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a["x"])),
    "gelu": gelu, "clip": lambda a: np.clip(a["x"], a["alpha"], a["beta"]), "range_1d": range_1d,
    "cast": lambda a: a["x"],  # the declared output dtype does the conversion
    "reduce_mean": reduce(np.mean), "reduce_sum": reduce(np.sum), "reduce_max": reduce(np.max),
    "shape": lambda a: np.array(a["x"].shape, np.int32),
    "reshape": reshape, "transpose": lambda a: np.transpose(a["x"], a["perm"]),
    "expand_dims": lambda a: np.expand_dims(a["x"], tuple(int(i) for i in a["axes"])),
    "squeeze": lambda a: np.squeeze(a["x"], tuple(int(i) for i in a["axes"])) if a.get("axes") is not None
    else np.squeeze(a["x"]),
    "tile": lambda a: np.tile(a["x"], a["reps"]),
    "concat": concat, "cumsum": cumsum,
    "gather": gather, "slice_by_index": slice_by_index, "slice_update": slice_update,
    "linear": linear, "matmul": matmul, "softmax": lambda a: softmax_last(np.moveaxis(a["x"], a["axis"], -1)),
    "scaled_dot_product_attention": scaled_dot_product_attention,
    "constexpr_blockwise_shift_scale": blockwise_shift_scale, "constexpr_lut_to_dense": lut_to_dense,
}

# ops that only move values of their input's type: their results need no rounding
DATA_MOVEMENT = {"read_state", "coreml_update_state", "slice_update", "slice_by_index", "reshape", "transpose",
                 "expand_dims", "squeeze", "tile", "concat", "gather"}


def accepts(array_type, shape: tuple) -> bool:
    """Whether Core ML takes an input of ``shape`` as the spec's ArrayFeatureType declares it: one of its
    enumerated shapes, within its ranges, or its one fixed shape."""
    kind = array_type.WhichOneof("ShapeFlexibility")
    if kind == "enumeratedShapes":
        return any(tuple(s.shape) == shape for s in array_type.enumeratedShapes.shapes)
    if kind == "shapeRange":
        ranges = array_type.shapeRange.sizeRanges
        return len(ranges) == len(shape) and all(
            r.lowerBound <= size and (r.upperBound < 0 or size <= r.upperBound) for r, size in zip(ranges, shape))
    return tuple(array_type.shape) == shape


def causal_mask(query_len: int, past: int) -> np.ndarray:
    """fp16 [1, 1, query_len, past + query_len + 1]: a leading 0 column (the contract's extra column),
    then 0 where a query may look and -inf elsewhere."""
    blocked = np.arange(past + query_len)[None, :] > np.arange(query_len)[:, None] + past
    mask = np.where(blocked, -np.inf, 0).astype(np.float16)
    return np.pad(mask, ((0, 0), (1, 0)))[None, None]


def zero_mask(query_len: int, past: int) -> np.ndarray:
    """fp16 zeros [1, 1, 1, past + query_len + 1]: what swift-transformers sends (the program masks causally)."""
    return np.zeros((1, 1, 1, past + query_len + 1), np.float16)


def chunk_lengths(count: int, query_lengths) -> list:
    """How an enumerated package takes ``count`` tokens: the longest query length that fits, again and again
    (1 is always one of them)."""
    chunks = []
    while count > 0:
        chunks.append(max(n for n in query_lengths if n <= count))
        count -= chunks[-1]
    return chunks


def masked_calls(mask=causal_mask):
    """Feed ids [1, T] at position ``past`` in one call with ``causalMask = mask(T, past)`` (ranged packages)."""
    def feed(interpreter, ids: np.ndarray, past: int) -> np.ndarray:
        return interpreter.predict({"inputIds": ids, "causalMask": mask(ids.shape[1], past)})["logits"]

    return feed


def chunked_calls(query_lengths):
    """Feed ids [1, T] at position ``past`` in chunks of :func:`chunk_lengths`, each with ``position`` [P]
    (enumerated packages); returns the last chunk's logits."""
    def feed(interpreter, ids: np.ndarray, past: int) -> np.ndarray:
        start = 0
        for length in chunk_lengths(ids.shape[1], query_lengths):
            logits = interpreter.predict({"inputIds": ids[:, start:start + length],
                                          "position": np.array([past + start], np.int32)})["logits"]
            start += length
        return logits

    return feed


def compare_greedy(interpreter, model, prompt, steps: int, mask=causal_mask, feed=None):
    """Prefill ``prompt`` then ``steps`` greedy steps fed with the model's token, through the package
    (``interpreter``, from an empty cache) and the model (``model.make_cache()``, then
    ``model(ids [1, T] int32, cache)`` -> float logits [1, T, vocab]). ``feed(interpreter, ids, past)``
    makes the package's calls: by default :func:`masked_calls` with ``mask(T, past)`` as each causalMask
    (:func:`causal_mask`, or :func:`zero_mask` as swift-transformers sends); :func:`chunked_calls` for an
    enumerated package.

    Returns (tokens from the package, tokens from the model, max |Δlogit| over every position the package
    returned: all, or the last only for a logits="last" package or a chunked prefill).
    """
    feed = feed or masked_calls(mask)
    interpreter.reset()
    prompt = np.array([prompt], np.int32)
    cache = model.make_cache()
    ours = feed(interpreter, prompt, 0)
    theirs = model(prompt, cache)
    delta, past = 0.0, prompt.shape[1]
    package_tokens, model_tokens = [], []
    for _ in range(steps + 1):
        delta = max(delta, float(np.abs(ours.astype(np.float32) - theirs[:, -ours.shape[1]:]).max()))
        package_tokens.append(int(ours[0, -1].argmax()))
        model_tokens.append(int(theirs[0, -1].argmax()))
        if len(model_tokens) > steps:
            break
        step = np.array([[model_tokens[-1]]], np.int32)
        ours = feed(interpreter, step, past)
        theirs = model(step, cache)
        past += 1
    return package_tokens, model_tokens, delta


class MILInterpreter:
    """A saved .mlpackage's ``main`` function, executed with numpy, with persistent states."""

    def __init__(self, package):
        import coremltools as ct

        self.function = load_program(package)
        self.input_types = {i.name: i.type.multiArrayType for i in ct.utils.load_spec(str(package)).description.input}
        self.operations = list(self.function.operations)
        unknown = sorted({op.op_type for op in self.operations} - set(OPS) -
                         {"const", "read_state", "coreml_update_state"})
        if unknown:
            raise UnsupportedOpError(f"the program uses ops the interpreter does not implement: {unknown}")
        several = sorted({op.op_type for op in self.operations if len(op.outputs) != 1})
        if several:
            raise UnsupportedOpError(f"ops with several outputs are not implemented: {several}")
        self.input_names = [n for n, v in self.function.inputs.items() if not self.is_state(v)]
        self.state_names = [n for n, v in self.function.inputs.items() if self.is_state(v)]
        self.output_names = [v.name for v in self.function.outputs]
        self.constants = self.evaluate_constants()
        self.reset()

    @staticmethod
    def is_state(var) -> bool:
        from coremltools.converters.mil.mil import types

        return types.is_state(var.sym_type)

    def reset(self) -> None:
        """Zero every state (an empty KV cache)."""
        from coremltools.converters.mil.mil import types

        self.states = {}
        for name in self.state_names:
            wrapped = self.function.inputs[name].sym_type.wrapped_type()
            dtype = types.builtin_to_string(wrapped.get_primitive())
            self.states[name] = np.zeros(wrapped.get_shape(), NUMPY_DTYPES[dtype]).astype(np.float32)

    def evaluate_constants(self) -> dict:
        """const and constexpr_* results, computed once (weights decompressed as the package says)."""
        values = {}
        for op in self.operations:
            if op.op_type == "const":
                values[op.outputs[0].name] = held_as(op.outputs[0].val, dtype_name(op.outputs[0]))
            elif op.op_type.startswith("constexpr_"):
                result = OPS[op.op_type](self.gather_inputs(op, values))
                values[op.outputs[0].name] = held_as(result, dtype_name(op.outputs[0]))
        return values

    @staticmethod
    def gather_inputs(op, values: dict) -> dict:
        def value(var):
            return values[var.name]

        return {name: tuple(value(v) for v in var) if isinstance(var, (tuple, list)) else value(var)
                for name, var in op.inputs.items()}

    def predict(self, inputs: dict) -> dict:
        """inputs: name -> numpy array, of a shape the package accepts. Returns output name -> numpy array
        (declared dtype)."""
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}")
        refused = [f"{name} {np.shape(inputs[name])}" for name in self.input_names
                   if not accepts(self.input_types[name], np.shape(inputs[name]))]
        if refused:
            raise ValueError(f"the package does not accept the shapes of {refused}")
        values = dict(self.constants)
        for name in self.input_names:
            values[name] = held_as(inputs[name], dtype_name(self.function.inputs[name]))
        for op in self.operations:
            if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                continue
            if op.op_type == "read_state":
                result = self.states[op.inputs["input"].name].copy()
            elif op.op_type == "coreml_update_state":
                result = values[op.inputs["value"].name]
                self.states[op.inputs["state"].name] = result.copy()
            else:
                result = OPS[op.op_type](self.gather_inputs(op, values))
            exact = op.op_type in DATA_MOVEMENT  # already rounded: skip re-rounding large arrays
            values[op.outputs[0].name] = result if exact else held_as(result, dtype_name(op.outputs[0]))
        return {name: values[name].astype(NUMPY_DTYPES[dtype_name(var)])
                for name, var in zip(self.output_names, self.function.outputs)}
