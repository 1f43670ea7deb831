"""Where a quantized model's error comes from: each part of it quantized alone, and each part left float.

    python benchmarks/kl_by_part.py QUANTIZED [--model FLOAT] [--out runs/kl_by_part]
        [--seq-len 512] [--max-windows 8]

QUANTIZED is a model folder saved by mlx_slm, quantized from the float model FLOAT (a folder or
.gguf; default the SmolLM2-135M GGUF, as the other benchmarks), e.g. a start folder of
benchmarks/lowbit_training.py. The parts are the tied embedding (also the output head), every
block's attention projections, every block's MLP, and the blocks in thirds. For each part two
models are scored against the float model on Debian's fortunes (8 x 512 tokens, as the quality
benchmarks: KL(float || model) per token, top-1 agreement): the float model with that part's
quantized layers swapped in ("alone"), and the quantized model with that part's layers swapped
back to float ("without"). A part whose "alone" KL is a large share of the whole model's, or whose
"without" KL drops far below it, is where more bits or training pay. A tied embedding's two roles
are then scored alone, each in the float model: the input lookup computing with the quantized
embedding's values and the output head with the float one ("embedding lookup"), and the other way
round ("output head"); these two run on MLX in float32 (the numpy engine knows no split embedding).
Prints a table and writes OUT/kl_by_part.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx_slm
from mlx_slm.data.corpora import local_text
from mlx_slm.errors import SLMError
from mlx_slm.io.atomic import atomic_file
from mlx_slm.model_access import model_config, set_model_config
from mlx_slm.quant.sequential import block_index

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import source_folder


def parts_of(paths: list[str]) -> dict[str, list[str]]:
    """Part name -> the quantized layer paths in it: the embedding (and an untied head), attention, MLP,
    and the blocks in thirds (empty parts left out)."""
    blocks = sorted({i for i in map(block_index, paths) if i is not None})
    thirds = [blocks[k * len(blocks) // 3:(k + 1) * len(blocks) // 3] for k in range(3)]
    parts = {"embedding+head": [p for p in paths if block_index(p) is None],
             "attention": [p for p in paths if ".self_attn." in p],
             "mlp": [p for p in paths if ".mlp." in p]}
    for third in thirds:
        if third:
            parts[f"blocks {third[0]}-{third[-1]}"] = [p for p in paths if block_index(p) in third]
    return {name: chosen for name, chosen in parts.items() if chosen}


def split_roles(model, quantized_embedding) -> list:
    """(part name, a stand-in for ``model``'s tied embedding) for each role computed with the quantized
    embedding's values, the other role with ``model``'s own float weights. The stand-in's input lookup
    reads ``lookup`` [V, D], its output head computes with ``head`` [V, D] (``as_linear``, as mlx-lm's
    tied models call it); MLX is imported here, after mlx_slm."""
    from mlx import nn

    from mlx_slm.runtime import dense_twin

    class Roles(nn.Module):
        def __init__(self, lookup, head):
            super().__init__()
            self.lookup, self.head = lookup, head

        def __call__(self, ids):
            return self.lookup[ids]

        def as_linear(self, x):
            return x @ self.head.T

    own = model.model.embed_tokens.weight
    values = dense_twin(quantized_embedding).weight.astype(own.dtype)  # any format's exact values
    return [("embedding lookup", Roles(values, own)), ("output head", Roles(own, values))]


class Swap:
    """Within the block, ``model`` holds ``modules`` (path -> module) in place of its own at those paths, and
    its config's ``quantization`` record says which layers are quantized: ``quantization`` (the quantized
    model's record) with the layers at ``floats`` kept float (``False``, as quantize records a kept layer)."""

    def __init__(self, model, modules: dict, quantization: dict, floats: list[str]):
        self.model, self.modules = model, modules
        self.quantization = {**quantization, **{path: False for path in floats}}

    def __enter__(self):
        from mlx.utils import tree_unflatten

        own = dict(self.model.named_modules())
        self.saved = [(path, own[path]) for path in self.modules]
        self.config = model_config(self.model)
        self.model.update_modules(tree_unflatten(list(self.modules.items())))
        set_model_config(self.model, {**self.config, "quantization": self.quantization})
        return self.model

    def __exit__(self, *exc):
        from mlx.utils import tree_unflatten

        self.model.update_modules(tree_unflatten(self.saved))
        set_model_config(self.model, self.config)


def measure(quantized_folder: Path, float_folder: Path, text: str, seq_len: int, max_windows: int) -> list[dict]:
    """The whole quantized model's row, then each part's "alone" and "without" scores."""
    from mlx_slm.runtime import quantized_modules

    reference, tokenizer = mlx_slm.load(float_folder)
    student, _ = mlx_slm.load(float_folder)
    quantized, _ = mlx_slm.load(quantized_folder)
    layers = dict(quantized_modules(quantized))
    floats = dict(student.named_modules())
    if not layers:
        raise SLMError(f"{quantized_folder} holds no quantized layer")
    if any(path not in floats for path in layers):
        raise SLMError(f"{quantized_folder} was not quantized from {float_folder}: their layers differ")
    record = model_config(quantized)["quantization"]

    def score(model, against=reference, engine=None) -> dict:
        report = mlx_slm.evaluate(model, tokenizer, [text], reference=against, seq_len=seq_len,
                                  max_windows=max_windows, decode_tokens=0, progress=False, cpu_engine=engine)
        return {"kld": report["kld"], "top1": report["top1"], "ppl": report["ppl"]}

    weights = {path: int(floats[path].weight.size) for path in layers}
    total = sum(weights.values())
    rows = [{"part": "all", "layers": len(layers), "weight_share": 1.0, "alone": score(quantized)}]
    for name, paths in parts_of(list(layers)).items():
        rest = [p for p in layers if p not in paths]
        with Swap(student, {p: layers[p] for p in paths}, record, rest):
            alone = score(student)
        with Swap(quantized, {p: floats[p] for p in paths}, record, paths):
            without = score(quantized)
        rows.append({"part": name, "layers": len(paths), "weight_share": sum(weights[p] for p in paths) / total,
                     "alone": alone, "without": without})
    embedding = "model.embed_tokens"
    if embedding in layers and model_config(student).get("tie_word_embeddings", True):
        float32, against = (in_float32(mlx_slm.load(float_folder)[0]) for _ in range(2))
        for name, roles in split_roles(float32, layers[embedding]):
            with Swap(float32, {embedding: roles}, {}, []):
                rows.append({"part": name, "layers": 1, "weight_share": weights[embedding] / total,
                             "alone": score(float32, against, "mlx")})
    return rows


def in_float32(model):
    """``model`` computing in float32, as the numpy engine computes a float16 model (MLX's CPU has no fast
    float16 matmul)."""
    import mlx.core as mx

    model.set_dtype(mx.float32)
    return model


def table(rows: list[dict]) -> str:
    whole = rows[0]["alone"]["kld"]
    header = (f"{'part':<16}{'layers':>7}{'weights':>9}{'KL alone':>10}{'share':>7}{'top-1':>8}"
              f"{'KL without':>12}{'top-1':>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        alone, without = row["alone"], row.get("without")
        rest = f"{without['kld']:>12.4f}{without['top1']:>8.1%}" if without else f"{'':>12}{'':>8}"
        lines.append(f"{row['part']:<16}{row['layers']:>7}{row['weight_share']:>9.1%}{alone['kld']:>10.4f}"
                     f"{alone['kld'] / whole:>7.0%}{alone['top1']:>8.1%}{rest}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("quantized", help="a quantized model folder saved by mlx_slm")
    parser.add_argument("--model", default=None, help="the float model it was quantized from, a folder or .gguf "
                                                      "(default: the SmolLM2-135M GGUF)")
    parser.add_argument("--out", default="runs/kl_by_part")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=8)
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    quantized = Path(args.quantized)
    if not (quantized / "config.json").is_file():
        parser.error(f"{quantized} is not a model folder (no config.json)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text, source = local_text("eval")
    try:
        rows = measure(quantized, source_folder(out, args.model), text, args.seq_len, args.max_windows)
    except SLMError as err:
        parser.error(str(err))
    print(table(rows))
    with atomic_file(out / "kl_by_part.json") as tmp:
        tmp.write_text(json.dumps({"quantized": str(quantized), "eval": source, "seq_len": args.seq_len,
                                   "max_windows": args.max_windows, "rows": rows}, indent=1))
    print(f"wrote {out / 'kl_by_part.json'}")


if __name__ == "__main__":
    main()
