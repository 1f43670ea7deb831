"""GGUF export with k-quant presets: llama.cpp's per-tensor types, files the `gguf` package and
mlx_slm.load read back, logits near the float model's, and calibration that lowers the output error."""

import numpy as np
import pytest
from helpers import sample_text, tiny_config, tiny_model_folder, tiny_weights, write_model_folder
from test_gguf_export import expected, read_back

import mlx_slm
from mlx_slm.data.windows import Calibration
from mlx_slm.errors import SLMError
from mlx_slm.export.kquant_plan import matrix_kind, use_more_bits

LAYERS = 4
CALIBRATION = [sample_text(60, seed=1)]
HELD_OUT = sample_text(5, seed=9)


def kquant_model(tmp_path, tied=True, outliers=None, seed=3):
    """A llama model whose matrices have rows of 256 or 512 weights; ``outliers``: 12 norm channels
    (in every norm) scaled by this, so that a few input columns carry most of the activation."""
    config = tiny_config("llama", vocab_size=270, hidden_size=256, intermediate_size=512, head_dim=64,
                         num_hidden_layers=LAYERS, tie_word_embeddings=tied)
    weights = tiny_weights(config, seed)
    rng = np.random.default_rng(5)
    for name in weights if outliers else ():
        if name.endswith("norm.weight"):
            norm = np.ones(weights[name].shape, np.float32)
            norm[rng.choice(norm.size, 12, replace=False)] = outliers
            weights[name] = norm.astype(np.float16)
    folder = write_model_folder(tmp_path / f"kq-{tied}-{outliers}", config, weights)
    return mlx_slm.load(folder, backend="numpy", progress=False)


def logit_error(model, tokenizer, path) -> float:
    """RMS difference of the logits of the file (loaded as float32) and of ``model`` on held-out text."""
    tokens = np.array([tokenizer.encode(HELD_OUT)[:64]])
    back, _ = mlx_slm.load(path, backend="numpy", dtype="float32", progress=False)
    return float(np.sqrt(np.mean(np.square(back(tokens) - model(tokens)))))


def test_presets_follow_llama_cpp_rules():
    q4 = [matrix_kind(f"blk.{i}.attn_v.weight", 4096, "q4_k_m", 32, False) for i in range(32)]
    assert [i for i, kind in enumerate(q4) if kind == "Q6_K"] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29,
                                                                   30, 31]
    assert all(kind == "Q4_K" for i, kind in enumerate(q4) if not use_more_bits(i, 32))
    assert matrix_kind("blk.5.ffn_down.weight", 11008, "q4_k_m", 32, False) == "Q4_K"
    assert matrix_kind("blk.6.ffn_down.weight", 11008, "q4_k_m", 32, False) == "Q6_K"
    assert matrix_kind("blk.6.attn_q.weight", 4096, "q4_k_m", 32, False) == "Q4_K"
    assert matrix_kind("output.weight", 4096, "q4_k_m", 32, False) == "Q6_K"
    assert matrix_kind("token_embd.weight", 4096, "q4_k_m", 32, False) == "Q4_K"
    assert matrix_kind("token_embd.weight", 4096, "q4_k_m", 32, True) == "Q6_K"  # tied: it is the head
    q3 = {role: [matrix_kind(f"blk.{i}.{role}.weight", 4096, "q3_k_m", 32, False) for i in range(32)]
          for role in ("attn_v", "ffn_down", "attn_output", "attn_q", "ffn_up")}
    assert q3["attn_v"] == ["Q5_K"] * 2 + ["Q4_K"] * 30 and q3["ffn_down"] == ["Q5_K"] * 2 + ["Q4_K"] * 30
    assert set(q3["attn_output"]) == {"Q4_K"} and set(q3["attn_q"]) == set(q3["ffn_up"]) == {"Q3_K"}
    assert matrix_kind("token_embd.weight", 4096, "q3_k_m", 32, False) == "Q3_K"
    assert {matrix_kind("blk.0.attn_v.weight", 4096, "q2_k", 32, False), matrix_kind("output.weight", 64, "q2_k", 32,
                                                                                        False)} == {"Q2_K", "Q8_0"}
    # rows of 128 weights (no whole super-block): llama.cpp's fallbacks; 48: F16
    assert [matrix_kind("blk.0.attn_q.weight", 128, p, 32, False) for p in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")] \
        == ["Q4_0", "Q4_0", "Q5_0", "Q5_1", "Q8_0"]
    assert matrix_kind("blk.0.attn_q.weight", 48, "q4_k_m", 32, False) == "F16"


@pytest.mark.parametrize("tied", [True, False])
def test_q4_k_m_file_reads_back_and_runs(tmp_path, tied):
    """Every matrix has its preset type, its gguf-dequantized values differ from the model's by exactly the
    reported error, the file type is MOSTLY_Q4_K_M, and the loaded file's logits are near the model's."""
    model, tokenizer = kquant_model(tmp_path, tied)
    report = mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.gguf", kquant="q4_k_m")
    reader, tensors, values = read_back(tmp_path / "m.gguf")
    assert int(reader.fields["general.file_type"].contents()) == 15
    records = {t.name: t for t in report.tensors}
    for name, (_, weight) in expected(model).items():
        kind = tensors[name].tensor_type.name
        if weight.ndim == 1:
            assert kind == "F32"
            continue
        assert kind == matrix_kind(name, weight.shape[1], "q4_k_m", LAYERS, tied) == records[name].kind, name
        assert records[name].how == "quantized"
        assert float(np.abs(values[name] - weight).max()) == records[name].error > 0, name
    more_bits = {f"blk.{i}.{role}.weight" for i in (2, 3) for role in ("attn_v", "ffn_down")}  # use_more_bits(i, 4)
    head = {"token_embd.weight" if tied else "output.weight"}
    assert {t.name for t in report.tensors if t.kind == "Q6_K"} == more_bits | head
    bits = {"Q4_K": 4.5, "Q6_K": 6.5625}  # 144 and 210 bytes per 256 weights
    matrices = [t for t in report.tensors if len(t.shape) == 2]
    assert all(8 * t.nbytes == bits[t.kind] * t.shape[0] * t.shape[1] for t in matrices)
    assert report.bpw == pytest.approx(4.837 if tied else 4.828, abs=5e-4)
    assert f"quantized: {len(matrices)} tensors to Q4_K, Q6_K; largest |error|" in report.format()
    assert logit_error(model, tokenizer, tmp_path / "m.gguf") < 0.35  # 0.32 (tied) of logits of RMS 0.97


def test_logit_error_follows_the_bits(tmp_path):
    """q6_k < q4_k_m < q3_k_m < q2_k in logit error; q6_k within 0.1 of the float model's logits."""
    model, tokenizer = kquant_model(tmp_path)
    errors = {}
    for preset in ("q6_k", "q4_k_m", "q3_k_m", "q2_k"):
        mlx_slm.export_gguf(model, tokenizer, tmp_path / f"{preset}.gguf", kquant=preset)
        errors[preset] = logit_error(model, tokenizer, tmp_path / f"{preset}.gguf")
    assert errors["q6_k"] < errors["q4_k_m"] < errors["q3_k_m"] < errors["q2_k"], errors
    assert errors["q6_k"] < 0.1, errors  # 0.091 measured


def test_calibration_lowers_the_output_error(tmp_path):
    """With a few input channels 8x louder than the rest, importance from calibration text lowers the
    held-out logit error of a q3_k_m export (1.30 against 1.54 measured)."""
    model, tokenizer = kquant_model(tmp_path, outliers=8.0)
    calibration = Calibration(CALIBRATION, tokenizer, 16, 64)
    errors = {}
    for label, given in (("plain", None), ("calibrated", calibration)):
        mlx_slm.export_gguf(model, tokenizer, tmp_path / f"{label}.gguf", kquant="q3_k_m", calibration=given)
        errors[label] = logit_error(model, tokenizer, tmp_path / f"{label}.gguf")
    assert errors["calibrated"] < 0.9 * errors["plain"], errors


def test_kquant_errors(tmp_path):
    model, tokenizer = kquant_model(tmp_path)
    with pytest.raises(SLMError, match="k-quant preset must be one of"):
        mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.gguf", kquant="q4_0")
    with pytest.raises(SLMError, match="calibration is for k-quants"):
        mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.gguf", calibration=CALIBRATION)
    quantized, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy", progress=False)
    mlx_slm.quantize(quantized, bits=4, group_size=32, progress=False)
    with pytest.raises(SLMError, match="quantize float models"):
        mlx_slm.export_gguf(quantized, tokenizer, tmp_path / "m.gguf", kquant="q4_k_m")
    assert not (tmp_path / "m.gguf").exists()


def test_cli_kquant(tmp_path, capsys):
    from mlx_slm.cli import main

    folder = tiny_model_folder(tmp_path)  # rows of 128 and 192 weights: llama.cpp's fallbacks
    text = tmp_path / "calib.txt"
    text.write_text(CALIBRATION[0])
    out = tmp_path / "k.gguf"
    assert main(["export", "gguf", str(folder), "-o", str(out), "--backend", "numpy", "--kquant", "q4_k_m",
                 "--calib", str(text), "--num-samples", "4", "--seq-len", "32"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "quantized:" in printed and "Q5_0" in printed and "Q8_0" in printed
    assert main(["export", "gguf", str(folder), "-o", str(tmp_path / "c.gguf"), "--calib", str(text)]) == 2
    assert "--calib is for k-quants" in capsys.readouterr().err


def test_per_tensor_plan(tmp_path):
    """A dict of types (here another export's) gives a file of exactly those types and size; a plan that
    misses a matrix, names an unknown type or a row its blocks do not divide is refused."""
    model, tokenizer = kquant_model(tmp_path)
    mlx_slm.export_gguf(model, tokenizer, tmp_path / "preset.gguf", kquant="q3_k_m")
    _, tensors, _ = read_back(tmp_path / "preset.gguf")
    plan = {name: t.tensor_type.name for name, t in tensors.items() if len(t.shape) == 2}
    plan["blk.1.attn_q.weight"] = "q5_0"  # any case; a 32-weight block with the search's choice
    report = mlx_slm.export_gguf(model, tokenizer, tmp_path / "plan.gguf", kquant=plan)
    assert {t.name: t.kind for t in report.tensors if len(t.shape) == 2} == {k: v.upper() for k, v in plan.items()}
    _, back, _ = read_back(tmp_path / "plan.gguf")
    assert back["blk.1.attn_q.weight"].tensor_type.name == "Q5_0"
    for bad, match in (({k: v for k, v in plan.items() if k != "output_norm.weight" and k != "token_embd.weight"},
                        "misses token_embd.weight"), ({**plan, "blk.0.attn_q.weight": "IQ2_XS"}, "types must be"),
                       ({**plan, "blk.9.attn_q.weight": "Q4_0"}, "names blk.9.attn_q.weight")):
        with pytest.raises(SLMError, match=match):
            mlx_slm.export_gguf(model, tokenizer, tmp_path / "bad.gguf", kquant=bad)
    folder = tiny_model_folder(tmp_path)  # rows of 128 weights: no Q4_K
    small, tokenizer = mlx_slm.load(folder, backend="numpy", progress=False)
    with pytest.raises(SLMError, match="Q4_K needs rows of a multiple of 256"):
        mlx_slm.export_gguf(small, tokenizer, tmp_path / "bad.gguf",
                            kquant={name: "Q4_K" for name in plan if name.startswith(("blk.0", "blk.1", "token"))})
    assert not (tmp_path / "bad.gguf").exists()
