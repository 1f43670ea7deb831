"""Fuzzed model files: truncations, bit flips and rewritten header values of a tiny GGUF file (Q8_0
matrices, F32 norms; 259 seeded variants) and a tiny safetensors model folder (209), each loaded
with the numpy backend and, where MLX is, with the MLX one. Each must end in an `SLMError` of one line,
or in a load equal to what an independent reader makes of the same bytes: never another exception,
a hang, or a wrong success.

The oracle, per variant:

GGUF. The reference is the `gguf` package: `GGUFReader` (given 1 s), every metadata value decoded,
then llama.cpp's layout rules (gguf.cpp), checked here: no array of arrays, at most 4 dimensions,
rows a whole number of quantization blocks, each tensor's data offset exactly where the previous
tensor's data ends (padded to the alignment), all data inside the file. From what the reference
reads, the expected model is built here: the config from the ``llama.*`` keys (positive integers
for sizes, numbers for eps and rope base, head_dim = key_length or hidden // heads), the tensors
dequantized by ``gguf.quants.dequantize``, renamed with test_gguf's table, Q/K rows un-permuted by
inverting test_gguf's ``llama_cpp_permute``. It is well-formed when the tensors are exactly those of
a llama model with that config (names and shapes; the output head optional) and the vocabulary is
unique strings with one integer type each.
  * The reference rejects the file, or the expected model is not well-formed: the load must raise
    SLMError.
  * Otherwise the load may raise SLMError (say, for an architecture or merge the loader does not
    support), but if it succeeds, the config, the bos/eos ids, the vocabulary (id -> token, and
    which ids are control or user-defined), the merges and every weight (same names, equal float32
    arrays, NaN included) must equal the expectation.
  * If the reference reads metadata and tensor infos equal to the original file's (the mutation
    touched only tensor data or padding), the load must succeed.

safetensors. The reference is the `safetensors` package's own parser (``safetensors.deserialize``:
the header JSON, dtypes, shapes, offsets tiling the data exactly). config.json is not mutated; the
model is well-formed when its tensors are exactly those of the folder's llama config, in F16, BF16
or F32. The same three rules: rejected or not well-formed -> SLMError; a success holds every tensor
with the reference's dtype and values; an unchanged header (a data-only mutation) must load.

Each load runs under a 10 s alarm, so a hang fails the test instead of stalling it (the reference
reader gets 1 s; running out of it counts as rejecting the file). Declared sizes must be checked
against the file before use: a GGUF array declared 2**62 bytes long must be an SLMError at once
(GGUFReader alone loops over it, growing, until stopped).
"""

import json
import math
import os
import signal
import struct
from contextlib import contextmanager

import gguf
import numpy as np
import pytest
from helpers import tiny_config, tiny_model_folder, tiny_weights
from safetensors import deserialize
from test_gguf import gguf_name, llama_cpp_permute, write_tiny_gguf

import mlx_slm
from mlx_slm.backend import backend_of
from mlx_slm.errors import SLMError
from mlx_slm.formats.dtypes import bfloat16
from mlx_slm.model_access import model_config

SEED = 2026
LOAD_SECONDS = 10
EXTREMES = (0, 1, 2, 3, 4, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1)
FLOAT_DTYPES = {"F16": np.dtype("<f2"), "BF16": bfloat16, "F32": np.dtype("<f4")}
ST_DTYPES = {**FLOAT_DTYPES, "F64": np.dtype("<f8"), "I16": np.dtype("<i2"), "U16": np.dtype("<u2"),
             "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?")}


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in a loader hides it."""


@contextmanager
def time_limit(seconds):
    """Raise Hang in the code inside once ``seconds`` have passed (SIGALRM: the main thread, POSIX)."""

    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def llama_shapes(config) -> dict | None:
    """Every tensor a llama model of ``config`` has -> its shape; None if the config describes none."""
    sizes = [config[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                                 "num_key_value_heads", "head_dim", "vocab_size")]
    if any(type(s) is not int or s < 1 for s in sizes) or config["num_hidden_layers"] > 64:
        return None
    hidden, layers, inter, heads, kv_heads, head_dim, vocab = sizes
    if heads % kv_heads or head_dim % 2:
        return None
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        })
    return shapes


def fits(config, tensors) -> bool:
    """The tensors ({name: array}) are exactly a llama model of ``config`` (the head optional)."""
    shapes = llama_shapes(config)
    if shapes is None:
        return False
    shapes["lm_head.weight"] = (config["vocab_size"], config["hidden_size"])
    optional = {"lm_head.weight"}
    return set(shapes) - optional <= set(tensors) <= set(shapes) and \
        all(tuple(value.shape) == shapes[name] for name, value in tensors.items())


def unpermute(w, heads):
    """Invert test_gguf's llama_cpp_permute by the row order it produces."""
    order = llama_cpp_permute(np.arange(w.shape[0]), heads)
    out = np.empty_like(w)
    out[order] = w
    return out


def weight_problems(model, expected: dict) -> list:
    """How the loaded model's weights differ from ``expected`` ({name: array}): names, dtypes, values."""
    if backend_of(model) == "numpy":
        got = {name: (np.asarray(v, np.float32), v.dtype.name) for name, v in model.weights.items()}
    else:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        got = {name: (np.array(v.astype(mx.float32)), str(v.dtype).rsplit(".", 1)[-1])
               for name, v in tree_flatten(model.parameters())}
    if set(got) != set(expected):
        return [f"weights {sorted(set(got) ^ set(expected))[:4]} differ in presence"]
    problems = []
    for name, want in expected.items():
        values, dtype = got[name]
        if dtype != want.dtype.name:
            problems.append(f"{name} is {dtype}, the file holds {want.dtype.name}")
        if not np.array_equal(values, want.astype(np.float32), equal_nan=True):
            problems.append(f"{name}: values differ from the reference's")
    return problems


class Fuzz:
    """Collects every variant's outcome; ``check`` applies the oracle."""

    def __init__(self, backend):
        self.backend, self.counts, self.problems = backend, {}, []

    def record(self, kind, label, outcome, problems=()):
        self.counts[(kind, outcome)] = self.counts.get((kind, outcome), 0) + 1
        self.problems += [f"{kind} {label}: {p}" for p in problems]

    def check(self, kind, label, path, expected, must_load, compare):
        """expected: what ``compare(model, tokenizer, expected)`` holds the load to, or why it must fail (a str)."""
        try:
            with time_limit(LOAD_SECONDS):
                model, tokenizer = mlx_slm.load(path, backend=self.backend, dtype="float32", progress=False)
        except Hang as err:
            return self.record(kind, label, "hang", [f"load hung ({err})"])
        except SLMError as err:
            problems = [f"an error of several lines: {err}"] if "\n" in str(err).strip() else []
            if must_load:
                problems.append(f"the reference reads it unchanged, the load failed: {err}")
            return self.record(kind, label, "error", problems)
        except Exception as err:  # any other exception is a finding
            return self.record(kind, label, "crash", [f"{type(err).__name__}: {err}"[:300]])
        if isinstance(expected, str):
            return self.record(kind, label, "wrong success", [f"loaded, but {expected}"])
        problems = compare(model, tokenizer, expected)
        self.record(kind, label, "loaded" if not problems else "wrong success", problems)

    def report(self, minimum_loaded, minimum_errors):
        summary = ", ".join(f"{k} {o}: {n}" for (k, o), n in sorted(self.counts.items()))
        assert not self.problems, f"{len(self.problems)} problems ({summary}):\n" + "\n".join(self.problems[:20])
        loaded = sum(n for (_, o), n in self.counts.items() if o == "loaded")
        errors = sum(n for (_, o), n in self.counts.items() if o == "error")
        assert loaded >= minimum_loaded and errors >= minimum_errors, summary
        return summary


# ---------------------------------------------------------------- GGUF


def read_reference_gguf(path):
    """(fields, reader) as the gguf package and llama.cpp's layout rules see the file; None if rejected."""
    try:
        with time_limit(1):
            reader = gguf.GGUFReader(str(path))
            fields = {key: field.contents() for key, field in reader.fields.items()}
    except (Exception, Hang):
        return None
    if any(f.types[:2] == [gguf.GGUFValueType.ARRAY] * 2 for f in reader.fields.values()):
        return None
    size, end = os.path.getsize(path), 0
    for tensor in reader.tensors:
        _, _, n_dims, dims, _, offset = tensor.field.parts
        block, type_size = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
        dims = [int(d) for d in dims]
        if int(n_dims[0]) > 4 or dims[0] % block or int(offset[0]) != end:
            return None
        n_bytes = math.prod(dims) // block * type_size
        if reader.data_offset + end + n_bytes > size:
            return None
        end += -(-n_bytes // reader.alignment) * reader.alignment
    return fields, reader


def gguf_meta(fields, reader):
    """Everything but tensor data: metadata values and tensor infos."""
    infos = [(t.name, t.tensor_type, [int(d) for d in t.shape], int(t.field.parts[-1][0])) for t in reader.tensors]
    return fields, infos


def gguf_config(fields, reader) -> dict | None:
    """The config the metadata describes, as a llama GGUF's keys define it; None if it describes none."""
    if fields.get("general.architecture") != "llama":
        return None

    def value(key, kind, default=None):
        v = fields.get(f"llama.{key}", default)
        return kind(v) if isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) else None

    config = {"model_type": "llama", "hidden_size": value("embedding_length", int),
              "num_hidden_layers": value("block_count", int), "intermediate_size": value("feed_forward_length", int),
              "num_attention_heads": value("attention.head_count", int),
              "rms_norm_eps": value("attention.layer_norm_rms_epsilon", float),
              "rope_theta": value("rope.freq_base", float, 10000.0),
              "max_position_embeddings": value("context_length", int, 2048)}
    if any(v is None for v in config.values()) or config["num_attention_heads"] < 1:
        return None
    config["num_key_value_heads"] = value("attention.head_count_kv", int, config["num_attention_heads"])
    config["head_dim"] = value("attention.key_length", int, config["hidden_size"] // config["num_attention_heads"])
    tokens = fields.get("tokenizer.ggml.tokens")
    types = fields.get("tokenizer.ggml.token_type")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) or len(set(tokens)) < len(tokens):
        return None
    if not isinstance(types, list) or len(types) != len(tokens) or not all(type(k) is int for k in types):
        return None
    config["vocab_size"] = len(tokens)
    config["tie_word_embeddings"] = "output.weight" not in {t.name for t in reader.tensors}
    return config


def gguf_expectation(config, reader) -> dict | None:
    """The weights a correct load holds (float32, Hugging Face names, Q/K un-permuted); None if they
    do not fit the config."""
    shapes = llama_shapes(config)
    if shapes is None:
        return None
    names = {gguf_name(name): name for name in [*shapes, "lm_head.weight"]}
    tensors = {}
    for tensor in reader.tensors:
        if tensor.name not in names:
            return None
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            values = np.asarray(values, np.float32).reshape([int(d) for d in reversed(tensor.shape)])
        except (NotImplementedError, ValueError):
            return None
        tensors[names[tensor.name]] = values
    if not fits(config, tensors):
        return None
    for name, value in tensors.items():
        if name.endswith("q_proj.weight"):
            tensors[name] = unpermute(value, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            tensors[name] = unpermute(value, config["num_key_value_heads"])
    return tensors


def gguf_oracle(path):
    """(what a load of ``path`` must equal, or why it must fail; the metadata and tensor infos the
    reference reads, None if it rejects the file)."""
    reference = read_reference_gguf(path)
    if reference is None:
        return "the reference rejects it", None
    config = gguf_config(*reference)
    weights = None if config is None else gguf_expectation(config, reference[1])
    if weights is None:
        why = "its metadata describes no llama model with a vocabulary" if config is None else \
            "its tensors are not those of its config"
        return why, gguf_meta(*reference)
    return (config, reference[0], weights), gguf_meta(*reference)


def compare_gguf(model, tokenizer, expected) -> list:
    """How a loaded GGUF model differs from the expectation: config, token ids, vocabulary, merges, weights."""
    config, fields, weights = expected
    got = model_config(model)
    problems = [f"config {k}: {got.get(k)!r}, the file says {v!r}" for k, v in config.items()
                if not (same(got.get(k), v) and type(got.get(k)) is type(v))]
    for key in ("bos", "eos"):
        want = fields.get(f"tokenizer.ggml.{key}_token_id")
        if want is not None and got.get(f"{key}_token_id") != want:
            problems.append(f"{key}_token_id {got.get(f'{key}_token_id')}, the file says {want}")
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    if tokenizer.convert_ids_to_tokens(list(range(len(tokens)))) != tokens:
        problems.append("the vocabulary differs from the file's")
    added = tokenizer.added_tokens_decoder
    for special, kind in ((True, 3), (False, 4)):
        if {i for i, t in added.items() if t.special == special} != {i for i, k in enumerate(types) if k == kind}:
            problems.append(f"the ids of tokens of type {kind} differ from the file's")
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    if [m if isinstance(m, str) else " ".join(m) for m in merges] != fields.get("tokenizer.ggml.merges", []):
        problems.append("the merges differ from the file's")
    return problems + weight_problems(model, weights)


def gguf_int_targets(reader) -> dict:
    """Every header number, by what it is: group -> [(offset, byte width, label)]."""
    groups = {"version": [(4, 4, "version")], "tensor count": [(8, 8, "tensor count")],
              "kv count": [(16, 8, "kv count")]}

    def add(group, offset, width, label):
        groups.setdefault(group, []).append((offset, width, label))

    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        starts = (field.offset + np.cumsum([0] + [p.nbytes for p in field.parts[:-1]])).tolist()
        add("key length", starts[0], 8, f"key length of {key}")
        add("value type", starts[2], 4, f"value type of {key}")
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            add("item type", starts[3], 4, f"item type of {key}")
            add("array length", starts[4], 8, f"array length of {key}")
            if field.types[-1] == gguf.GGUFValueType.STRING:
                for i in (5, 7, len(starts) - 2):
                    add("string length", starts[i], 8, f"length of {key}[{(i - 5) // 2}]")
            else:
                for i in range(5, len(starts)):
                    add("array item", starts[i], field.parts[i].nbytes, f"{key}[{i - 5}]")
        elif field.types[0] == gguf.GGUFValueType.STRING:
            add("string length", starts[3], 8, f"length of {key}")
        else:
            add("value", starts[3], field.parts[-1].nbytes, f"value of {key}")
    for tensor in reader.tensors:
        name, dims = tensor.field.parts[1], tensor.field.parts[3]
        start = tensor.field.offset
        dims_at = start + 8 + name.nbytes + 4
        add("name length", start, 8, f"name length of {tensor.name}")
        add("n_dims", dims_at - 4, 4, f"n_dims of {tensor.name}")
        for i in range(len(dims)):
            add("dim", dims_at + 8 * i, 8, f"dim {i} of {tensor.name}")
        add("tensor type", dims_at + dims.nbytes, 4, f"type of {tensor.name}")
        add("data offset", dims_at + dims.nbytes + 4, 8, f"data offset of {tensor.name}")
    return groups


def pick(rng, items):
    """One of ``items``, as it is (numpy's choice would turn a mixed list into one dtype)."""
    return items[int(rng.integers(len(items)))]


def with_int(data: bytes, offset: int, width: int, value: int) -> bytes:
    return data[:offset] + (value % 2 ** (8 * width)).to_bytes(width, "little") + data[offset + width:]


def flipped(data: bytes, rng, header_end: int, bits: int) -> tuple[str, bytes]:
    """``bits`` random bit flips; each lands in the first ``header_end`` bytes with probability 0.6."""
    out, where = bytearray(data), []
    for _ in range(bits):
        offset = int(rng.integers(header_end) if rng.random() < 0.6 else rng.integers(header_end, len(data)))
        out[offset] ^= 1 << int(rng.integers(8))
        where.append(offset)
    return f"{bits} bit(s) at {where}", bytes(out)


def truncations(data: bytes, rng, structural: list, count: int):
    offsets = sorted(set(structural) | {int(o) for o in rng.integers(0, len(data), count - len(structural))})
    return [(data[:o], f"at {o}") for o in offsets]


def gguf_variants(data: bytes, reader, rng):
    """(kind, label, bytes): truncations, single and multi bit flips, rewritten header integers."""
    tensors = reader.tensors
    info_start, data_start = tensors[0].field.offset, reader.data_offset
    structural = [0, 3, 10, 20, int(rng.integers(24, info_start)), int(rng.integers(24, info_start)),
                  info_start, int(rng.integers(info_start, data_start)), data_start - 1, data_start,
                  tensors[1].data_offset + 7, len(data) - 1]
    for data_cut, label in truncations(data, rng, structural, 36):
        yield "truncated", label, data_cut
    for bits in [1] * 60 + [2, 3, 5, 8] * 10:
        yield "flipped", *flipped(data, rng, data_start, bits)
    groups = gguf_int_targets(reader)
    for group in groups.values():
        for offset, width, what in (pick(rng, group) for _ in range(8)):
            original = int.from_bytes(data[offset: offset + width], "little")
            value = pick(rng, [*EXTREMES, original + 1, original - 1, 2 * original])
            yield "rewritten", f"{what} = {value % 2 ** (8 * width)}", with_int(data, offset, width, value)
    for offset, width, what in groups["array length"]:  # GGUFReader loops over such an array until stopped
        yield "rewritten", f"{what} = 2**62 bytes", with_int(with_int(data, offset, width, 2**62), offset - 4, 4, 0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN and overflow in decoded flipped values
@pytest.mark.parametrize("backend", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
def test_fuzzed_gguf(tmp_path, backend):
    config = tiny_config(vocab_size=263)
    write_tiny_gguf(tmp_path / "tiny.gguf", config, tiny_weights(config, seed=7))
    data = (tmp_path / "tiny.gguf").read_bytes()
    expected, original = gguf_oracle(tmp_path / "tiny.gguf")
    assert not isinstance(expected, str), expected
    fuzz = Fuzz(backend)
    fuzz.check("original", "", tmp_path / "tiny.gguf", expected, True, compare_gguf)
    variants = gguf_variants(data, gguf.GGUFReader(tmp_path / "tiny.gguf"), np.random.default_rng(SEED))
    for i, (kind, label, mutated) in enumerate(variants):
        path = tmp_path / f"v{i}.gguf"  # a new file: the last model may still map the one before
        path.write_bytes(mutated)
        expected, meta = gguf_oracle(path)
        fuzz.check(kind, label, path, expected, meta is not None and meta == original, compare_gguf)
        path.unlink()
    print(fuzz.report(minimum_loaded=40, minimum_errors=150))


# ---------------------------------------------------------------- safetensors


def read_reference_safetensors(data: bytes) -> dict | None:
    """name -> array as the safetensors package parses ``data``; None if it rejects it."""
    try:
        entries = deserialize(data)
    except Exception:
        return None
    tensors = {}
    for name, entry in entries:
        if entry["dtype"] not in ST_DTYPES:
            return {}  # a dtype numpy cannot hold: never a float model
        tensors[name] = np.frombuffer(bytes(entry["data"]), ST_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors


def safetensors_header(data: bytes) -> tuple[dict, int]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8: 8 + length]), 8 + length


def with_header(data: bytes, header: dict) -> bytes:
    """``data`` with its JSON header replaced (re-encoded and padded like safetensors does)."""
    _, start = safetensors_header(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data[start:]


def header_edits(header: dict, rng):
    """(label, new header) rewriting dtype, shape and data_offsets values, names and metadata."""
    names = sorted(k for k in header if k != "__metadata__")

    def edit(name, key, value):
        changed = json.loads(json.dumps(header))
        changed[name][key] = value
        return f"{name} {key} = {value}", changed

    for dtype in ["F32", "BF16", "I16", "U16", "F64", "U8", "BOOL", "F8_E4M3", "f16", "", 16, None] * 2:
        yield edit(pick(rng, names), "dtype", dtype)
    for index in list(range(13)) * 2:
        name = pick(rng, names)
        shape = header[name]["shape"]
        choices = [[], [0], shape[::-1], [2 * shape[0], *shape[1:]], [-1, *shape[1:]], [2**63], [2**64],
                   [*shape, 1], [1, *shape], [math.prod(shape)], "x", [1.5], [*shape[:-1], shape[-1] + 1]]
        yield edit(name, "shape", choices[index])
    for index in list(range(11)) * 2:
        name = pick(rng, names)
        begin, end = header[name]["data_offsets"]
        choices = [[0, 0], [end, begin], [begin, end + 1], [begin - 1, end - 1], [begin, 2**63], [-2, end],
                   [begin], "x", [begin, end, 0], [begin + 2, end + 2], [begin, 2**64]]
        yield edit(name, "data_offsets", choices[index])
    sizes = {}
    for name in names:
        sizes.setdefault(tuple(header[name]["shape"]), []).append(name)
    for group in [g for g in sizes.values() if len(g) > 1][:4]:  # same-sized tensors with swapped data
        a, b = (str(n) for n in rng.choice(group, 2, replace=False))
        changed = json.loads(json.dumps(header))
        changed[a]["data_offsets"], changed[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
        yield f"data of {a} and {b} swapped", changed
    for old, new in (("model.layers.1.", "model.layers.7."), ("model.norm.", "model.nurm."), ("mlp.", "mlq.")):
        name = next(n for n in names if old in n)
        changed = {(k.replace(old, new) if k == name else k): v for k, v in header.items()}
        yield f"{name} renamed", changed
    for metadata in ({"format": 1}, "mlx", {"format": "mlx", "x": ["y"]}):
        yield f"__metadata__ = {metadata}", {**header, "__metadata__": metadata}


def safetensors_variants(data: bytes, rng):
    header, start = safetensors_header(data)
    structural = [0, 4, 7, 8, 9, start // 2, start - 1, start, start + 1, start + 300, len(data) - 1]
    for data_cut, label in truncations(data, rng, structural, 30):
        yield "truncated", label, data_cut
    for bits in [1] * 50 + [2, 3, 5, 8] * 8:
        yield "flipped", *flipped(data, rng, start, bits)
    length = start - 8
    for value in (*EXTREMES, length - 1, length + 1, length - 8, length + 8, len(data) - 8, len(data)):
        yield "rewritten", f"header length = {value % 2**64}", with_int(data, 0, 8, value)
    for label, changed in header_edits(header, rng):
        yield "rewritten", label, with_header(data, changed)


def safetensors_oracle(data: bytes, config: dict):
    """(what a load must hold, or why it must fail; the JSON header if the reference reads ``data``)."""
    reference = read_reference_safetensors(data)
    if reference is None:
        return "the reference rejects it", None
    floats = all(v.dtype in FLOAT_DTYPES.values() for v in reference.values())
    if not (reference and floats and fits(config, reference)):
        return "its tensors are not the config's float tensors", safetensors_header(data)[0]
    return reference, safetensors_header(data)[0]


def compare_safetensors(model, tokenizer, expected) -> list:
    return weight_problems(model, expected)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
def test_fuzzed_safetensors(tmp_path, backend):
    folder = tiny_model_folder(tmp_path, seed=7)
    config = json.loads((folder / "config.json").read_text())
    file = folder / "model.safetensors"
    data = file.read_bytes()
    expected, original = safetensors_oracle(data, config)
    assert not isinstance(expected, str), expected
    fuzz = Fuzz(backend)
    fuzz.check("original", "", folder, expected, True, compare_safetensors)
    for kind, label, mutated in safetensors_variants(data, np.random.default_rng(SEED)):
        (tmp_path / "next").write_bytes(mutated)
        os.replace(tmp_path / "next", file)  # a new file: the last model may still map the old one
        expected, header = safetensors_oracle(mutated, config)
        fuzz.check(kind, label, folder, expected, header is not None and header == original, compare_safetensors)
    print(fuzz.report(minimum_loaded=20, minimum_errors=120))
