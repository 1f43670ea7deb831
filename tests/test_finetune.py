"""Fine-tuning: LoRA / DoRA / QLoRA training, adapter round trips, fuse (float, RTN, GPTQ), CLI, errors."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import sample_text, tiny_config, tiny_tokenizer, tiny_weights, write_model_folder

from mlx_slm.errors import MLXRequiredError, SLMError
from mlx_slm.io.atomic import MARKER

HIDDEN = os.environ.get("MLX_SLM_EXPECT_NO_MLX") == "1"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TRAIN = dict(steps=30, batch_size=4, learning_rate=1e-3, seq_len=48, progress=False)
PROBE = [[1, 40, 50, 60, 70, 80, 90, 100, 110, 2]]


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A float16 and a float32 tiny Llama (tokenizer with a chat template), JSONL data, calibration text."""
    root = tmp_path_factory.mktemp("finetune")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = tiny_config()
    paragraphs = sample_text(48, seed=3).split("\n\n")
    return {
        "fp16": write_model_folder(root / "fp16", config, tiny_weights(config, 0), tokenizer),
        "fp32": write_model_folder(root / "fp32", {**config, "torch_dtype": "float32"},
                                   tiny_weights(config, 0, np.float32), tokenizer),
        "text": write_jsonl(root / "text.jsonl", [{"text": p[:150]} for p in paragraphs]),
        "chat": write_jsonl(root / "chat.jsonl", [{"messages": [{"role": "user", "content": p[:40]},
                                                                {"role": "assistant", "content": p[40:90]}]}
                                                  for p in paragraphs[:8]]),
        "completions": write_jsonl(root / "completions.jsonl",
                                   [{"prompt": p[:40], "completion": p[40:90]} for p in paragraphs[:8]]),
        "calib": (root / "calib.txt", (root / "calib.txt").write_text(sample_text(80, seed=5)))[0],
        "root": root,
    }


def load(files, kind="fp16", bits=None, group_size=32):
    import mlx_slm

    model, tokenizer = mlx_slm.load(files[kind], progress=False)
    if bits:
        mlx_slm.quantize(model, bits=bits, group_size=group_size, progress=False)
    return model, tokenizer


def logits(model, tokens=PROBE) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array(tokens)).astype(mx.float32))


def params(model) -> dict:
    from mlx.utils import tree_flatten

    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def finetune_run(files, **options):
    from mlx_slm.finetune import finetune

    model, tokenizer = load(files, bits=options.pop("bits", None))
    history = finetune(model, tokenizer, options.pop("data", files["text"]), **{**TRAIN, **options})
    return model, tokenizer, history


def early_late(history):
    losses = [r["loss"] for r in history]
    return np.mean(losses[:3]), np.mean(losses[-5:])


@pytest.mark.mlx
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_training_lowers_the_loss(files, method):
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    model, _, history = finetune_run(files, method=method, seed=1)
    early, late = early_late(history)
    assert [r["step"] for r in history] == list(range(1, 31))
    assert late < 0.75 * early, (early, late)
    layers = [m for _, m in model.named_modules() if isinstance(m, (LoRALinear, DoRALinear))]
    assert len(layers) == 2 * 7 and all(isinstance(m, DoRALinear if method == "dora" else LoRALinear) for m in layers)
    assert all(np.abs(np.array(m.lora_b)).max() > 0 for m in layers)


@pytest.mark.mlx
def test_qlora_trains_while_the_quantized_base_stays_bit_identical(files):
    from mlx import nn
    from mlx_lm.tuner.lora import LoRALinear

    from mlx_slm.finetune import finetune

    model, tokenizer = load(files, bits=4)
    before = params(model)
    history = finetune(model, tokenizer, files["text"], **TRAIN)
    after = params(model)
    base = {k for k in after if not k.rsplit(".", 1)[-1].startswith("lora_")}
    assert {k.replace(".linear.", ".") for k in base} == set(before)
    assert all(np.array_equal(after[k], before[k.replace(".linear.", ".")]) for k in base)
    assert all(after[k].dtype == before[k.replace(".linear.", ".")].dtype for k in base)
    lora = [m for _, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert lora and all(type(m.linear) is nn.QuantizedLinear and m.linear.bits == 4 for m in lora)
    early, late = early_late(history)
    assert late < 0.75 * early, (early, late)


@pytest.mark.mlx
def test_adapters_load_in_mlx_lm_with_the_same_logits(files):
    from mlx_lm.tuner.utils import load_adapters as mlx_lm_load_adapters

    folder = files["root"] / "adapters-roundtrip"
    model, _, _ = finetune_run(files, method="dora", steps=5, adapter_dir=folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir() if p.name != MARKER) == [
        "adapter_config.json", "adapters.safetensors", "optimizer.safetensors", "training_state.json"]
    fresh, _ = load(files)
    mlx_lm_load_adapters(fresh, str(folder))
    np.testing.assert_allclose(logits(fresh), logits(model), rtol=0, atol=1e-5)


@pytest.mark.mlx
def test_resume_continues_the_run_exactly(files):
    from mlx_slm.finetune import finetune

    folder = files["root"] / "adapters-resume"
    straight, _, history = finetune_run(files, steps=6)
    finetune_run(files, steps=3, adapter_dir=folder, overwrite=True)
    resumed, tokenizer = load(files)
    history_resumed = finetune(resumed, tokenizer, files["text"], **{**TRAIN, "steps": 6}, adapter_dir=folder,
                               resume=True)
    assert [r["step"] for r in history_resumed] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in history_resumed], [r["loss"] for r in history], rtol=1e-5)
    expected, got = params(straight), params(resumed)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-6)


@pytest.mark.mlx
@pytest.mark.parametrize("data", ["chat", "completions"])
def test_chat_and_completion_records_train_with_prompt_masking(files, data):
    _, _, history = finetune_run(files, data=files[data], steps=4, seq_len=160, mask_prompt=True,
                                 valid_jsonl=files[data], eval_every=2)
    assert all(np.isfinite(r["loss"]) and r["tokens"] > 0 for r in history)
    assert [r["step"] for r in history if "val_loss" in r] == [2, 4]


def adapted_model(files, bits, folder=None, keys=None, kind="fp16"):
    """A model with LoRA layers whose B matrices are large random values (a clear adapter delta)."""
    import mlx.core as mx

    from mlx_slm.finetune.adapters import adapter_layers, add_adapters, save_adapters

    model, tokenizer = load(files, kind, bits=bits)
    mx.random.seed(7)
    config = add_adapters(model, "lora", 8, 20.0, 0.0, -1, keys)
    for _, layer in adapter_layers(model):
        layer.lora_b = 0.004 * mx.random.normal(layer.lora_b.shape)
    if folder is not None:
        save_adapters(folder, model, config)
    return model, tokenizer


@pytest.mark.mlx
def test_fuse_into_a_float_base_keeps_the_logits(files):
    from mlx_slm import model_config
    from mlx_slm.finetune import fuse

    model, _ = adapted_model(files, None, kind="fp32")
    unfused = logits(model)
    fuse(model)
    np.testing.assert_allclose(logits(model), unfused, rtol=0, atol=1e-4)
    assert np.abs(unfused - logits(load(files, "fp32")[0])).max() > 0.1  # the adapter does change the output
    record = model_config(model)["mlx_slm"]["fuse"]
    assert record["requantize"] == "none (float base)" and record["layers"] == 14


def kld(model, reference, tokenizer, text) -> float:
    import mlx_slm

    return mlx_slm.evaluate(model, tokenizer, text=text, reference=reference, seq_len=64, max_windows=6,
                            decode_tokens=0, progress=False, cpu_engine="mlx")["kld"]


@pytest.mark.mlx
def test_gptq_fuse_keeps_the_adapter_better_than_rtn_and_loads_in_stock_mlx_lm(files):
    from mlx import nn

    import mlx_slm
    from mlx_slm.finetune import fuse, load_adapters

    folder = files["root"] / "adapters-3bit"
    keys = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
    unfused, tokenizer = adapted_model(files, 3, folder, keys)
    fused = {}
    for requantize in ("rtn", "gptq", None):
        model, _ = load(files, bits=3)
        load_adapters(model, folder)
        fused[requantize] = fuse(model, requantize=requantize, calib=files["calib"], tokenizer=tokenizer,
                                 num_samples=8, seq_len=64, progress=False)
    text = files["calib"]
    base_kld = kld(load(files, bits=3)[0], unfused, tokenizer, text)
    rtn, gptq, kept = (kld(fused[r], unfused, tokenizer, text) for r in ("rtn", "gptq", None))
    assert kept < 1e-3 and gptq < 0.5 * rtn < base_kld, (kept, gptq, rtn, base_kld)
    # layers without adapters are untouched; fused layers stay 3-bit in the base's layout
    original, after = params(load(files, bits=3)[0]), params(fused["gptq"])
    assert set(after) == set(original)
    for k in original:
        same = np.array_equal(after[k], original[k])
        assert same != any(f".{key}." in k for key in keys), k
        assert after[k].dtype == original[k].dtype and after[k].shape == original[k].shape
    assert all(type(m) is nn.QuantizedLinear and m.bits == 3 for p, m in fused["gptq"].named_modules()
               if p.endswith(("q_proj", "v_proj", "down_proj")))
    record = mlx_slm.model_config(fused["gptq"])["mlx_slm"]["fuse"]
    assert record["requantize"] == "gptq" and record["quantized_layers"] == 6
    assert record["calibration"]["num_samples"] == 8

    out = mlx_slm.save(fused["gptq"], tokenizer, files["root"] / "fused-gptq", overwrite=True)
    script = ("import json, sys, mlx.core as mx, mlx_lm\n"
              "model, tok = mlx_lm.load(sys.argv[1])\n"
              f"print(json.dumps(model(mx.array({PROBE})).astype(mx.float32).tolist()))\n")
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    stock = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(stock, logits(fused["gptq"]), rtol=0, atol=1e-3)
    assert json.loads((out / "config.json").read_text())["mlx_slm"]["fuse"]["requantize"] == "gptq"


@pytest.mark.mlx
def test_the_cli_trains_and_fuses(files, capsys):
    from mlx_slm.finetune.cli import add_finetune_parser, add_fuse_parser

    parser = argparse.ArgumentParser(prog="mlx-slm")
    commands = parser.add_subparsers(dest="command", required=True)
    add_finetune_parser(commands)
    add_fuse_parser(commands)
    adapters, out = files["root"] / "cli-adapters", files["root"] / "cli-fused"
    for argv in (["finetune", str(files["fp16"]), "--data", str(files["text"]), "-o", str(adapters),
                  "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--learning-rate", "1e-3"],
                 ["fuse", str(files["fp16"]), "--adapters", str(adapters), "-o", str(out)]):
        args = parser.parse_args(argv)
        args.run(args)
    printed = capsys.readouterr().out
    assert "3 steps" in printed and "14 adapter layers fused" in printed
    assert (adapters / "adapters.safetensors").is_file() and (out / "model.safetensors").is_file()
    with pytest.raises(SLMError, match="already exists"):
        args = parser.parse_args(["finetune", str(files["fp16"]), "--data", str(files["text"]), "-o", str(adapters)])
        args.run(args)


@pytest.mark.mlx
def test_bad_input_gives_one_clear_error(files, tmp_path):
    from mlx_slm.finetune import finetune, fuse, load_adapters

    model, tokenizer = load(files)
    plain = tiny_tokenizer()
    cases = [
        (tmp_path / "missing.jsonl", {}, "no such JSONL file"),
        (write_jsonl(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}]), {}, "unknown record shape"),
        (write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a b"}, {"prompt": "a", "completion": "b"}]), {},
         "use one shape per file"),
        (write_jsonl(tmp_path / "short.jsonl", [{"text": "a b"}] * 3), {"batch_size": 4}, "fewer than one batch of 4"),
        (files["text"], {"method": "qlora"}, "method must be one of"),
        (files["chat"], {"mask_prompt": True, "seq_len": 16}, "no example keeps a completion token"),
        (files["text"], {"num_layers": 5}, "num_layers must be"),
        (files["text"], {"keys": ["attn.nothing"]}, "no layer matches keys"),
        (files["text"], {"adapter_dir": files["root"], "resume": False}, "already exists"),
    ]
    for path, options, message in cases:
        fresh, _ = load(files)
        with pytest.raises(SLMError, match=message):
            finetune(fresh, tokenizer, path, **{**TRAIN, "steps": 1, **options})
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(SLMError, match="bad.jsonl:2: not valid JSON"):
        finetune(model, tokenizer, tmp_path / "bad.jsonl")
    with pytest.raises(SLMError, match="need a chat template"):
        finetune(model, plain, files["chat"])
    adapted_model(files, None, folder=tmp_path / "plain-adapters")
    with pytest.raises(SLMError, match="no training state to resume"):
        finetune(load(files)[0], tokenizer, files["text"], adapter_dir=tmp_path / "plain-adapters", resume=True)
    with pytest.raises(SLMError, match="no LoRA/DoRA layers to fuse"):
        fuse(model)
    with pytest.raises(SLMError, match="not an adapter folder"):
        load_adapters(model, tmp_path)
    quantized, _ = adapted_model(files, 3)
    with pytest.raises(SLMError, match="requantize must be"):
        fuse(quantized, requantize="awq")
    with pytest.raises(SLMError, match="calibration text is missing"):
        fuse(quantized, requantize="gptq", tokenizer=tokenizer)


@pytest.mark.skipif(not HIDDEN, reason="only in the numpy-fallback run (MLX hidden)")
def test_without_mlx_training_and_fusing_say_so():
    from mlx_slm.finetune import finetune, fuse, load_adapters

    with pytest.raises(MLXRequiredError, match="fine-tuning needs MLX"):
        finetune(None, None, "train.jsonl")
    with pytest.raises(MLXRequiredError, match="fusing adapters needs MLX"):
        fuse(None, requantize="gptq")
    with pytest.raises(MLXRequiredError, match="loading adapters needs MLX"):
        load_adapters(None, "adapters")
