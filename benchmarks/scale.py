"""Peak memory and time of each pipeline step on synthetic models of larger shapes, with a fit
and an 8B extrapolation.

    python benchmarks/scale.py [--shapes 360m,1.7b] [--steps convert,rtn,gptq,awq,imatrix,sparsegpt,eval,
        coreml,coreai,gguf]
        [--out runs/scale] [--num-samples 64] [--keep]

Each shape is a Llama model with random bfloat16 weights (normal, std 0.02; norms 1) whose
sizes come from a public config: SmolLM2-360M, SmolLM2-1.7B, Qwen3-4B (its widths, heads and
vocabulary as a Llama model, no q/k norms), Llama-3-8B. The generator streams tensors into
``model.safetensors`` one at a time (its own memory stays at one tensor), and the folder gets
SmolLM2's tokenizer (token ids below 49152; the larger vocabularies keep their embedding sizes).
Every step runs as its own ``python -m mlx_slm`` process; "peak RSS" is that process's maximum
resident set since it started (its VmHWM), "cpu s" its user + system time, "x bf16" peak RSS over the bfloat16
model's size. Calibrated steps read ``--num-samples`` x 256 tokens of data/kjv.txt; evaluation
reads 4 x 512 tokens of data/heldout.txt (``python examples/sample_files.py`` writes both);
eval and the exports read the rtn step's 4-bit model, so they need that step. sparsegpt prunes
half of every decoder layer's weights, on GPTQ's calibration statistics.
The fit is least squares, linear in the parameter count, over the shapes measured, and the
8B figure its value at Llama-3-8B's count: an extrapolation. Prints a table and writes
OUT/scale.json after every step (``--resume`` keeps the rows already measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import earlier_rows

import mlx_slm
from mlx_slm import _heap
from mlx_slm.io.atomic import atomic_file
from mlx_slm.io.packaged import smollm2_gguf

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"model_type": "llama", "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
          "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
SHAPES = {  # name -> config keys (public configs' sizes)
    "360m": {"hidden_size": 960, "num_hidden_layers": 32, "intermediate_size": 2560, "num_attention_heads": 15,
             "num_key_value_heads": 5, "vocab_size": 49152, "tie_word_embeddings": True},
    "1.7b": {"hidden_size": 2048, "num_hidden_layers": 24, "intermediate_size": 8192, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 49152, "tie_word_embeddings": True},
    "4b": {"hidden_size": 2560, "num_hidden_layers": 36, "intermediate_size": 9728, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True},
    "8b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
}
STD = 0.02


def tensor_shapes(config: dict) -> dict:
    """Parameter name -> shape, in the order the file holds them."""
    d, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "self_attn.q_proj.weight": (q, d),
                       p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.v_proj.weight": (kv, d),
                       p + "self_attn.o_proj.weight": (d, q), p + "post_attention_layernorm.weight": (d,),
                       p + "mlp.gate_proj.weight": (inter, d), p + "mlp.up_proj.weight": (inter, d),
                       p + "mlp.down_proj.weight": (d, inter)})
    shapes["model.norm.weight"] = (d,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (config["vocab_size"], d)
    return shapes


def parameter_count(config: dict) -> int:
    return sum(int(np.prod(shape)) for shape in tensor_shapes(config).values())


def bfloat16_bytes(values: np.ndarray) -> bytes:
    """float32 -> bfloat16 (round to nearest even) as little-endian bytes."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def write_safetensors(path: Path, shapes: dict, seed: int) -> None:
    """Random bfloat16 tensors (matrices normal with std :data:`STD`, vectors 1) written one at a time."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for shape in shapes.values():
            if len(shape) == 1:
                f.write(bfloat16_bytes(np.ones(shape, np.float32)))
                continue
            for row in range(0, shape[0], 4096):  # 4096 rows at a time keeps the generator small
                rows = min(4096, shape[0] - row)
                f.write(bfloat16_bytes(rng.standard_normal((rows, shape[1]), dtype=np.float32) * STD))


def write_model(folder: Path, shape: str) -> dict:
    """The synthetic model of ``shape`` in ``folder`` (kept if already complete); returns its config."""
    config = {**COMMON, **SHAPES[shape]}
    if (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        return config
    folder.mkdir(parents=True, exist_ok=True)
    _, tokenizer = mlx_slm.load(smollm2_gguf(), backend="numpy", progress=False)
    tokenizer.save_pretrained(str(folder))
    write_safetensors(folder / "model.safetensors", tensor_shapes(config), seed=len(shape))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return config


def step_commands(model: Path, work: Path, num_samples: int) -> dict:
    """Step name -> (argv after ``python -m mlx_slm``, output path)."""
    kjv, heldout = str(ROOT / "data" / "kjv.txt"), str(ROOT / "data" / "heldout.txt")
    calib = ["--calib", kjv, "--num-samples", str(num_samples), "--seq-len", "256"]
    q4 = ["--bits", "4", "--group-size", "64"]
    return {
        "convert": (["convert", str(model), "-o", str(work / "converted")], work / "converted"),
        "rtn": (["quantize", str(model), "-o", str(work / "rtn"), *q4], work / "rtn"),
        "gptq": (["quantize", str(model), "-o", str(work / "gptq"), *q4, "--method", "gptq", *calib],
                 work / "gptq"),
        "awq": (["quantize", str(model), "-o", str(work / "awq"), *q4, "--method", "awq", *calib], work / "awq"),
        "imatrix": (["quantize", str(model), "-o", str(work / "imatrix"), *q4, "--method", "imatrix", *calib],
                    work / "imatrix"),
        "sparsegpt": (["prune", str(model), "-o", str(work / "sparsegpt"), "--method", "sparsegpt", "--sparsity",
                       "0.5", *calib], work / "sparsegpt"),
        "eval": (["eval", str(work / "rtn"), "--text", heldout, "--max-windows", "4", "--seq-len", "512",
                  "--decode-tokens", "8"], None),
        # each package in its own folder: both write tokenizer files beside it
        "coreml": (["export", "coreml", str(work / "rtn"), "-o", str(work / "coreml" / "Model.mlpackage"),
                    "--max-context", "256", "--overwrite"], work / "coreml" / "Model.mlpackage"),
        "coreai": (["export", "coreai", str(work / "rtn"), "-o", str(work / "coreai" / "Model.aimodel"),
                    "--max-context", "256", "--overwrite"], work / "coreai" / "Model.aimodel"),
        "gguf": (["export", "gguf", str(work / "rtn"), "-o", str(work / "model.gguf")], work / "model.gguf"),
    }


# A step's own peak: a child's ru_maxrss starts at its parent's peak (fork copies the parent's memory
# counters and exec keeps their maximum), so the step reports its VmHWM, counted from exec, as it exits.
STEP = """import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def report():
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(report)
sys.argv[0] = "mlx-slm"
runpy.run_module("mlx_slm", run_name="__main__", alter_sys=True)
"""


def run_step(argv: list, log: Path) -> dict:
    """Run ``python -m mlx_slm argv`` to its end: wall s, cpu s, peak RSS bytes (the step's own VmHWM on
    Linux; elsewhere ``wait4``'s maximum, which includes this process's peak)."""
    peak_file = log.with_suffix(".peak")
    peak_file.unlink(missing_ok=True)
    proc = Path("/proc/self/status").exists()
    command = [sys.executable, "-c", STEP, str(peak_file), *argv] if proc else [sys.executable, "-m", "mlx_slm", *argv]
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TQDM_DISABLE": "1"})
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed ({process.returncode}); see {log}")
    rss = int(peak_file.read_text()) * 1024 if proc else usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss": rss,
            "peak_from": "VmHWM" if proc else "wait4",
            "heap": _heap.describe()}  # the step ran with this process's environment, so its heap setting


def size_of(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fits(rows: list[dict]) -> dict:
    """Per step, least-squares lines of peak RSS and wall time against parameters, read at 8B."""
    params_8b = parameter_count({**COMMON, **SHAPES["8b"]})
    out = {}
    for step in dict.fromkeys(row["step"] for row in rows):
        points = [row for row in rows if row["step"] == step]
        if len({row["params"] for row in points}) < 2:
            continue
        x = np.array([row["params"] for row in points], np.float64)
        estimate = {}
        for key in ("peak_rss", "wall_s"):
            slope, intercept = np.polyfit(x, np.array([row[key] for row in points], np.float64), 1)
            estimate[key] = {"per_param": slope, "intercept": intercept, "at_8b": slope * params_8b + intercept}
        out[step] = estimate
    return out


def table(rows: list[dict], fitted: dict) -> str:
    lines = [f"{'shape':6} {'params':>7} {'step':9} {'wall s':>8} {'cpu s':>8} {'peak RSS':>9} {'x bf16':>7} "
             f"{'output':>9}"]
    for row in rows:
        output = "-" if row["output_bytes"] is None else f"{row['output_bytes'] / 1e9:.2f} GB"
        lines.append(f"{row['shape']:6} {row['params'] / 1e9:6.2f}B {row['step']:9} {row['wall_s']:8.0f} "
                     f"{row['cpu_s']:8.0f} {row['peak_rss'] / 1e9:6.2f} GB {row['rss_over_bf16']:7.2f} {output:>9}")
    if fitted:
        lines.append("\nlinear fit over the shapes measured, read at Llama-3-8B's size (an extrapolation):")
        for step, estimate in fitted.items():
            lines.append(f"  {step:9} peak RSS {estimate['peak_rss']['at_8b'] / 1e9:6.2f} GB, "
                         f"wall {estimate['wall_s']['at_8b'] / 60:6.1f} min")
    return "\n".join(lines)


def write_results(path: Path, settings: dict, rows: list[dict]) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps({"settings": settings, "rows": rows, "fit": fits(rows)}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="360m,1.7b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--steps", default="convert,rtn,gptq,awq,imatrix,sparsegpt,eval,coreml,coreai,gguf")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument("--num-samples", type=int, default=64, help="calibration windows of 256 tokens")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic models and outputs")
    parser.add_argument("--resume", action="store_true", help="keep rows already in OUT/scale.json")
    args = parser.parse_args()
    shapes, steps = args.shapes.split(","), args.steps.split(",")
    unknown = [s for s in shapes if s not in SHAPES] + [s for s in steps if s not in step_commands(Path(), Path(), 1)]
    if unknown:
        parser.error(f"unknown shape or step: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "scale.json"
    settings = {"num_samples": args.num_samples}
    rows = earlier_rows(result_path, settings, parser) if args.resume else []
    for shape in shapes:
        if all(any(r["shape"] == shape and r["step"] == step for r in rows) for step in steps):
            continue  # every step measured already (--resume): no model to generate
        model = args.out / f"model-{shape}"
        config = write_model(model, shape)
        params = parameter_count(config)
        work = args.out / f"work-{shape}"
        work.mkdir(exist_ok=True)
        for step, (argv, output) in step_commands(model, work, args.num_samples).items():
            if step not in steps or any(r["shape"] == shape and r["step"] == step for r in rows):
                continue
            if output is not None and output.exists():
                shutil.rmtree(output) if output.is_dir() else output.unlink()
            print(f"{shape}: {step} ...", flush=True)
            measured = run_step(argv, work / f"{step}.log")
            rows.append({"shape": shape, "params": params, "step": step, **measured,
                         "rss_over_bf16": measured["peak_rss"] / (2 * params), "output_bytes": size_of(output)})
            write_results(result_path, settings, rows)
        if not args.keep:
            shutil.rmtree(work)
            shutil.rmtree(model)
    write_results(result_path, settings, rows)  # the fit over rows kept with --resume too
    print(table(rows, fits(rows)))


if __name__ == "__main__":
    main()
