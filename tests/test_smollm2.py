"""The default model, SmolLM2-135M from GGUF: stock mlx_lm runs our output; backends agree."""

import subprocess
import sys

import numpy as np
import pytest
from test_quantize import assert_same_weights, mlx_lm_convert, saved_weights

import mlx_slm

STOCK_GREEDY = """
import sys
from mlx_lm import load, generate
model, tokenizer = load(sys.argv[1])
print(generate(model, tokenizer, "The capital of France is", max_tokens=3, verbose=False))
"""


@pytest.mark.mlx
def test_stock_mlx_lm_says_paris(smollm2_dir):
    """A fresh interpreter with only mlx_lm imported loads the converted folder and completes."""
    out = subprocess.run([sys.executable, "-c", STOCK_GREEDY, str(smollm2_dir)], capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    assert "mlx_slm" not in out.stderr
    assert out.stdout.strip().startswith("Paris"), out.stdout


@pytest.mark.mlx
@pytest.mark.parametrize("bits,group_size", [(4, 64), (3, 128)])
def test_rtn_equals_mlx_lm_convert_on_smollm2(smollm2_dir, tmp_path, bits, group_size):
    reference = saved_weights(mlx_lm_convert(smollm2_dir, tmp_path / "stock", bits, group_size))
    model, tokenizer = mlx_slm.load(smollm2_dir, backend="mlx")
    mlx_slm.quantize(model, bits=bits, group_size=group_size, progress=False)
    assert_same_weights(saved_weights(mlx_slm.save(model, tokenizer, tmp_path / "ours")), reference)


@pytest.mark.mlx
@pytest.mark.parametrize("bits", [16, 4])
def test_numpy_perplexity_within_one_percent_of_mlx(smollm2_dir, english_text, bits):
    reports = []
    for backend in ("mlx", "numpy"):
        model, tokenizer = mlx_slm.load(smollm2_dir, backend=backend)
        if bits < 16:
            mlx_slm.quantize(model, bits=bits, group_size=64, progress=False)
        reports.append(mlx_slm.evaluate(model, tokenizer, english_text, seq_len=256, max_windows=2,
                                        decode_tokens=0, progress=False, cpu_engine="mlx"))
    assert [r["engine"] for r in reports] == ["mlx", "numpy"]
    mlx_ppl, numpy_ppl = reports[0]["ppl"], reports[1]["ppl"]
    assert abs(numpy_ppl - mlx_ppl) / mlx_ppl < 0.01
    assert 5 < mlx_ppl < 200  # a working 135M model on English prose, not noise (vocab 49152)


def test_numpy_quality_on_smollm2(smollm2_dir, english_text):
    """numpy-only: 4-bit RTN costs quality, measured against the float model."""
    model, tokenizer = mlx_slm.load(smollm2_dir, backend="numpy")
    reference, _ = mlx_slm.load(smollm2_dir, backend="numpy")
    mlx_slm.quantize(model, bits=4, group_size=64, progress=False)
    report = mlx_slm.evaluate(model, tokenizer, english_text, reference=reference, seq_len=128, max_windows=2,
                              decode_tokens=4, progress=False)
    assert 0.05 < report["kld"] < 1.0 and 0.5 < report["top1"] < 0.95
    assert report["bpw"] == pytest.approx(4.5)
    greedy = reference(np.array([tokenizer.encode("The capital of France is", add_special_tokens=False)]))
    assert tokenizer.decode([int(greedy[0, -1].argmax())]).strip() == "Paris"
