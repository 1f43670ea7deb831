"""``export_gguf``: a Llama-family model -> one ``.gguf`` file for llama.cpp (and :func:`mlx_slm.load`).

The file is what llama.cpp's ``convert_hf_to_gguf.py`` writes for the same architecture: the
``{arch}.*`` hyperparameters, the byte-level BPE vocabulary (:mod:`.gguf_vocab`), tensors under
llama.cpp's names (``blk.3.attn_q.weight``) with a llama model's Q and K rows permuted for its RoPE
kernel, no ``output.weight`` when the head is tied to the embedding. Quantized layers keep their
values where a GGUF block holds them exactly (affine 2-4 bits -> Q4_1, 5 bits -> Q5_1, see
:mod:`.gguf_tensors`). A k-quant preset (``kquant="q4_k_m"``, :mod:`.kquant_plan`) quantizes a float
model's matrices to Q2_K-Q6_K packed by :mod:`.kquants`, weighted by input importance from calibration
text when given (:mod:`.gguf_importance`). The returned :class:`GGUFReport` says, per tensor, how it
was written and with what largest error.

The file is streamed: the header lists every tensor's type and size, decided before any tensor is
encoded (:func:`plan_tensors`: float tensors from their stored shapes, quantized layers from their
views, one slice of rows at a time); then each tensor is converted, permuted, encoded and appended a
slice of rows (at most :data:`.weights.SLICE_WEIGHTS` weights) at a time (:func:`write_tensor`), so beside the
model only one slice's copies are alive. The bytes are those gguf's whole-file ``write_tensors_to_file`` writes.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SLMError
from ..io.atomic import atomic_file, refuse_inputs
from ..io.gguf import ARCHITECTURES, GLOBAL_NAMES, LAYER_NAMES
from ..loading import model_source
from ..model_access import model_config
from .gguf_importance import as_calibration, gguf_importance
from .gguf_tensors import TYPE_NAMES, block_type, encode, encode_quantized, qk_permute, tensor_type
from .gguf_vocab import vocab_fields, write_vocab
from .kquant_plan import PRESETS, check_preset, check_types, matrix_kind
from .weights import ModelWeights, row_slices

log = logging.getLogger(__name__)

FLOAT_CHOICES = tuple(TYPE_NAMES)  # --type: what float matrices (and lut/ternary layers) become
REQUANTIZE_CHOICES = tuple(TYPE_NAMES)  # --requantize-type: affine layouts no GGUF block holds exactly
ARCH_OF = {model_type: arch for arch, model_type in ARCHITECTURES.items()}  # model_type -> GGUF architecture
GGUF_STEMS = {**{hf: gg for gg, hf in GLOBAL_NAMES.items()}, **{hf: gg for gg, hf in LAYER_NAMES.items()}}
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K": 11,
              "Q4_K": 14, "Q5_K": 16, "Q6_K": 18, "IQ4_NL": 25, "BF16": 32}  # llama.cpp's LlamaFileType (K: _S)
CHANGED = ("quantized", "requantized", "dequantized")  # TensorRecord.how of tensors not written exactly
QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION, which llama.cpp writes into every file


@dataclass
class TensorRecord:
    """One written tensor: GGUF name, type, shape [N, K] (model order), bytes, how, largest |error|."""

    name: str
    kind: str
    shape: tuple
    nbytes: int
    how: str
    error: float


@dataclass
class GGUFReport:
    """What :func:`export_gguf` wrote: the file, its size and each tensor (:class:`TensorRecord`)."""

    path: Path
    file_bytes: int = 0
    tensors: list = field(default_factory=list)

    def types(self) -> dict:
        """GGUF type -> {"tensors", "bytes", "bpw"}; bpw over its matrices (None if it holds only vectors)."""
        rows = {}
        for t in self.tensors:
            row = rows.setdefault(t.kind, {"tensors": 0, "bytes": 0, "matrix_bits": 0, "matrix_weights": 0})
            row["tensors"] += 1
            row["bytes"] += t.nbytes
            if len(t.shape) == 2:
                row["matrix_bits"] += 8 * t.nbytes
                row["matrix_weights"] += t.shape[0] * t.shape[1]
        return {kind: {"tensors": r["tensors"], "bytes": r["bytes"],
                       "bpw": r["matrix_bits"] / r["matrix_weights"] if r["matrix_weights"] else None}
                for kind, r in sorted(rows.items(), key=lambda kv: -kv[1]["bytes"])}

    @property
    def bpw(self) -> float:
        """Bits per weight over every matrix as stored."""
        matrices = [t for t in self.tensors if len(t.shape) == 2]
        return sum(8 * t.nbytes for t in matrices) / max(1, sum(t.shape[0] * t.shape[1] for t in matrices))

    def errors(self) -> dict:
        """GGUF name -> largest |written - model| weight, for tensors not written exactly."""
        return {t.name: t.error for t in self.tensors if t.how in CHANGED or t.error}

    def format(self) -> str:
        lines = [f"wrote {self.path}: {self.file_bytes / 1e6:.1f} MB, {self.bpw:.3f} bits per matrix weight",
                 f"{'type':<6} {'tensors':>7} {'bytes':>12} {'bpw':>7}"]
        for kind, row in self.types().items():
            bpw = "-" if row["bpw"] is None else f"{row['bpw']:.3f}"
            lines.append(f"{kind:<6} {row['tensors']:>7} {row['bytes']:>12} {bpw:>7}")
        for how in CHANGED:
            changed = [t for t in self.tensors if t.how == how]
            if changed:
                worst = max(changed, key=lambda t: t.error)
                kinds = ", ".join(sorted({t.kind for t in changed}))
                lines.append(f"{how}: {len(changed)} tensors to {kinds}; largest |error| {worst.error:.3g} "
                             f"({worst.name})")
        return "\n".join(lines)


def resolve_types(types) -> tuple[str, str]:
    """``types`` -> (GGUF type of float matrices, GGUF type of requantized affine layers).

    None: ("F16", "Q8_0"). A string: the float type. A dict: ``{"float": ..., "requantize": ...}``.
    Values are f32, f16, bf16 or q8_0.
    """
    if types is None or isinstance(types, str):
        types = {} if types is None else {"float": types}
    if not isinstance(types, dict) or set(types) - {"float", "requantize"}:
        raise SLMError(f"types must be a type name or a dict with keys 'float' and 'requantize', not {types!r}")
    chosen = {"float": "f16", "requantize": "q8_0", **types}
    for key, value in chosen.items():
        if not isinstance(value, str) or value.lower() not in TYPE_NAMES:
            raise SLMError(f"GGUF {key} type must be one of {', '.join(TYPE_NAMES)}, not {value!r}")
    return TYPE_NAMES[chosen["float"].lower()], TYPE_NAMES[chosen["requantize"].lower()]


def check_output_file(out_path, overwrite: bool = False, inputs=()) -> Path:
    """Refuse an output that may not be written (before any work); return it resolved.

    It must end in .gguf (``mlx_slm.load`` reads files by that suffix), be neither an input nor a
    folder holding one, and exist only with ``overwrite``.
    """
    path = Path(out_path).expanduser()
    if path.suffix.lower() != ".gguf":
        raise SLMError(f"the output must end in .gguf, not {path.name!r}")
    path = refuse_inputs(path, [p for p in inputs if p is not None and Path(str(p)).expanduser().exists()])
    if path.is_dir():
        raise SLMError(f"{path} is a folder, not a GGUF file")
    if path.exists() and not overwrite:
        raise SLMError(f"{path} already exists (pass --overwrite / overwrite=True to replace it)")
    return path


def check_config(config: dict) -> str:
    """The GGUF architecture of a model ``config``; SLMError for what the GGUF reader could not run."""
    model_type = config.get("model_type")
    if model_type not in ARCH_OF:
        raise SLMError(f"GGUF export supports model types {', '.join(ARCH_OF)}, not {model_type!r}")
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("type") or scaling.get("rope_type")
    if kind not in (None, "default", "linear"):
        raise SLMError(f"GGUF export supports linear rope scaling only, not {kind!r}")
    if config.get("mlp_bias"):
        raise SLMError("GGUF export does not support MLP biases (mlp_bias)")
    return ARCH_OF[model_type]


def gguf_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight`` (inverse of the reader's ``hf_name``)."""
    stem, _, suffix = name.rpartition(".")
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    if match and match.group(2) in LAYER_NAMES.values():
        return f"blk.{match.group(1)}.{GGUF_STEMS[match.group(2)]}.{suffix}"
    if stem in GLOBAL_NAMES.values():
        return f"{GGUF_STEMS[stem]}.{suffix}"
    raise SLMError(f"tensor {name!r} has no place in a llama.cpp {'/'.join(ARCH_OF)} model")


def full_name(key: str) -> str:
    """A weights key as a tensor name: a quantized layer's path gets ``.weight``."""
    return key if key.rsplit(".", 1)[-1] in ("weight", "bias") else f"{key}.weight"


def model_tensors(weights: ModelWeights) -> list[tuple[str, str]]:
    """(GGUF name, key of ``weights``) in llama.cpp's order: embedding, blocks, final norm, head."""
    tensors = [(gguf_name(full_name(key)), key) for key in weights]

    def order(item):
        parts = item[0].split(".")
        if parts[0] == "blk":
            return (1, int(parts[1]), item[0])
        return ({"token_embd": 0, "output_norm": 2, "output": 3}[parts[0]], 0, item[0])

    return sorted(tensors, key=order)


def row_order(key: str, rows: int, config: dict, arch: str) -> np.ndarray:
    """The model's rows of tensor ``key`` in the file's order: a llama model's Q and K rows permuted for
    llama.cpp's RoPE kernel (:func:`.gguf_tensors.qk_permute`), every other tensor's as they are."""
    heads = {"q_proj": int(config["num_attention_heads"]),
             "k_proj": int(config.get("num_key_value_heads") or config["num_attention_heads"])}
    projection = full_name(key).rsplit(".", 2)[-2]
    if arch == "llama" and projection in heads:
        return qk_permute(rows, heads[projection])
    return np.arange(rows)


def write_hyperparameters(writer, config: dict, arch: str, name: str | None) -> None:
    """The ``general.*`` and ``{arch}.*`` keys llama.cpp's converter writes for this architecture."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    writer.add_type("model")
    if name:
        writer.add_name(name)
    writer.add_block_count(int(config["num_hidden_layers"]))
    if config.get("max_position_embeddings"):
        writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(int(config["vocab_size"]))
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    scaling = config.get("rope_scaling") or {}
    if (scaling.get("type") or scaling.get("rope_type")) == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


def file_type(records: list) -> int:
    """llama.cpp's ``general.file_type``: the type holding most matrix weights."""
    weights = {}
    for t in records:
        if len(t.shape) == 2:
            weights[t.kind] = weights.get(t.kind, 0) + t.shape[0] * t.shape[1]
    return FILE_TYPES[max(weights, key=weights.get)] if weights else FILE_TYPES["F32"]


def kquant_tensors(model, weights: ModelWeights, tensors: list, preset, calibration, tokenizer,
                   progress: bool) -> dict:
    """GGUF name -> (type, importance or None) of every matrix under k-quant ``preset`` (a name or a
    per-tensor plan), from the stored shapes; SLMError for a quantized model (k-quants are chosen from
    float weights)."""
    quantized = [name for name, key in tensors if weights.quantized(key)]
    if quantized:
        raise SLMError(f"k-quant presets quantize float models; {quantized[0]} is already quantized "
                       "(export the float model)")
    layers = int(model_config(model)["num_hidden_layers"])
    tied = "output.weight" not in dict(tensors)
    importance = {} if calibration is None else gguf_importance(model, as_calibration(calibration, tokenizer),
                                                                progress)
    shapes = {name: weights.shape(key) for name, key in tensors}
    widths = {name: shape[1] for name, shape in shapes.items() if len(shape) == 2}
    kinds = check_types(preset, widths) if isinstance(preset, dict) else \
        {name: matrix_kind(name, width, preset, layers, tied) for name, width in widths.items()}
    return {name: (block_type(kind, widths[name]), importance.get(name)) for name, kind in kinds.items()}


@dataclass
class PlannedTensor:
    """One tensor of the file, decided before any is written: GGUF name, key in :class:`ModelWeights`,
    shape [N, K] (model order), GGUF type, how it is written (:func:`.gguf_tensors.tensor_type`, or
    "quantized" by a k-quant preset) and that preset's importance [K] (or None)."""

    name: str
    key: str
    shape: tuple
    kind: str
    how: str
    importance: object = None

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data: whole blocks of its type along each row."""
        import gguf

        block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.kind]]
        return math.prod(self.shape) // block * block_bytes


def plan_tensors(weights: ModelWeights, tensors: list, kquants: dict, float_kind: str,
                 requantize_kind: str) -> list[PlannedTensor]:
    """Every tensor's type and size, before any is written (the header lists them): a float tensor's from
    its stored shape; a quantized layer's from its view, made slice by slice (:func:`layer_type`)."""
    planned = []
    for name, key in tensors:
        shape = weights.shape(key)
        if name in kquants:
            kind, importance = kquants[name]
            planned.append(PlannedTensor(name, key, shape, kind, "quantized", importance))
        elif weights.quantized(key):
            planned.append(PlannedTensor(name, key, shape, *layer_type(weights, key, float_kind, requantize_kind)))
        else:
            planned.append(PlannedTensor(name, key, shape, *tensor_type(weights.arrays[weights.names[key]], float_kind,
                                                                        requantize_kind)))
    return planned


def layer_type(weights: ModelWeights, key: str, float_kind: str, requantize_kind: str) -> tuple[str, str]:
    """(GGUF type, how) of a quantized layer: :func:`.gguf_tensors.tensor_type` of each slice of rows, exact
    only if every slice is (else requantized, as a whole layer would be)."""
    shape = weights.shape(key)
    types = {tensor_type(weights.rows(key, index), float_kind, requantize_kind)
             for index in row_slices(np.arange(shape[0]), shape)}
    return types.pop() if len(types) == 1 else (block_type(requantize_kind, shape[1]), "requantized")


def write_tensor(out, weights: ModelWeights, planned: PlannedTensor, order: np.ndarray) -> TensorRecord:
    """Convert, encode and append one tensor's data to ``out`` slice of rows by slice (rows in ``order``),
    so only one slice's copies are alive; returns its :class:`TensorRecord`."""
    written, error = 0, 0.0
    for index in row_slices(order, planned.shape):
        value = weights.rows(planned.key, index)
        tensor = encode_quantized(planned.name, value, planned.kind, planned.importance) \
            if planned.how == "quantized" else encode(planned.name, value, planned.kind, planned.how)
        tensor.data.tofile(out)
        written, error = written + tensor.data.nbytes, max(error, tensor.error)
        del value, tensor  # before the next slice is made
    if written != planned.nbytes:
        raise SLMError(f"{planned.name}: wrote {written} bytes, its tensor info says {planned.nbytes}")
    return TensorRecord(planned.name, planned.kind, planned.shape, written, planned.how, error)


def write_header(path, writer, planned: list) -> int:
    """The header, key-value data and tensor infos (``writer`` holds the keys); returns the data alignment."""
    import gguf

    for t in planned:  # the weight's own shape (not bytes per row): its type is given as raw_dtype
        writer.add_tensor_info(t.name, t.shape, np.float32, t.nbytes, raw_dtype=gguf.GGMLQuantizationType[t.kind])
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
    finally:
        writer.close()
    return writer.data_alignment


def pad(out, alignment: int) -> None:
    """Zeros up to the next multiple of ``alignment`` (each tensor's data starts and ends aligned)."""
    out.write(bytes(-out.tell() % alignment))


def export_gguf(model, tokenizer, path, overwrite: bool = False, types=None, kquant: str | None = None,
                calibration=None, progress: bool = False) -> GGUFReport:
    """Write ``model`` and ``tokenizer`` to the GGUF file ``path`` (written beside it, then renamed).

    model: from :func:`mlx_slm.load` (MLX or numpy backend): llama, qwen2 or qwen3, float or quantized.
    types: None, a type name for float matrices, or ``{"float": ..., "requantize": ...}``; names are
    f32, f16, bf16, q8_0 (defaults f16 and q8_0). Norms and biases are always F32; affine layers of
    2-4 bits are Q4_1 and of 5 bits Q5_1 exactly; other affine layers become the requantize type and
    lut/ternary layers the float type (both measured).
    kquant: a preset of :data:`.kquant_plan.PRESETS` (q4_k_m, q3_k_m, q2_k .. q6_k) for a float model:
    its matrices become k-quants (or the preset's fallbacks) instead of ``types``' float type; or a dict
    naming every matrix's type (GGUF name -> Q2_K .. Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0, F16, F32).
    calibration: with ``kquant``, a :class:`~mlx_slm.data.windows.Calibration` or calibration text
    (path or list of strings); the k-quants then minimize the error weighted by each column's mean
    squared input (None: unweighted). progress: show the calibration pass's progress.
    Returns a :class:`GGUFReport`.
    """
    import gguf

    float_kind, requantize_kind = resolve_types(types)
    preset = None if kquant is None else check_preset(kquant)
    if calibration is not None and preset is None:
        raise SLMError("calibration is for k-quants: pass a k-quant preset too (kquant=..., --kquant)")
    config = model_config(model)
    arch = check_config(config)
    inputs = [model_source(model)]
    target = check_output_file(path, overwrite, inputs)
    weights = ModelWeights(model)
    embedding = "model.embed_tokens" if "model.embed_tokens" in weights else "model.embed_tokens.weight"
    config["vocab_size"] = int(weights.shape(embedding)[0])  # what the file's token list must cover
    fields = vocab_fields(tokenizer, config)
    tensors = model_tensors(weights)
    kquants = {} if preset is None else kquant_tensors(model, weights, tensors, preset, calibration, tokenizer,
                                                        progress)
    planned = plan_tensors(weights, tensors, kquants, float_kind, requantize_kind)
    source = model_source(model)
    title = None if source is None else source.stem if source.is_file() else source.name
    report = GGUFReport(path=target)
    check_output_file(target, overwrite, inputs)  # again: the file may have appeared meanwhile
    with atomic_file(target, inputs) as partial:
        writer = gguf.GGUFWriter(None, arch)
        write_hyperparameters(writer, config, arch, title)
        writer.add_file_type(PRESETS[preset][1] if isinstance(preset, str) else file_type(planned))
        writer.add_quantization_version(QUANTIZATION_VERSION)
        write_vocab(writer, fields)
        alignment = write_header(partial, writer, planned)
        with open(partial, "ab") as out:
            for t in planned:
                pad(out, alignment)
                report.tensors.append(write_tensor(out, weights, t, row_order(t.key, t.shape[0], config, arch)))
                pad(out, alignment)
    dequantized = [t for t in report.tensors if t.how == "dequantized"]
    if dequantized:
        log.warning("%d lut/ternary layers have no GGUF type yet: written dequantized as %s (%s, ...)",
                    len(dequantized), "/".join(sorted({t.kind for t in dequantized})), dequantized[0].name)
    report.file_bytes = target.stat().st_size
    return report
