"""evaluate(): perplexity, KL and top-1 against hand computation; bpw and size; text input."""

import json

import numpy as np
import pytest
from helpers import sample_text, tiny_model_folder

import mlx_slm
from mlx_slm.data.windows import token_windows
from mlx_slm.errors import SLMError
from mlx_slm.evaluate import log_softmax


def hand_metrics(model, reference, windows):
    nll, kl, agree, count = 0.0, 0.0, 0, 0
    for window in windows:
        lp = log_softmax(model(window[None])[0].astype(np.float64))[:-1]
        rp = log_softmax(reference(window[None])[0].astype(np.float64))[:-1]
        nll -= lp[np.arange(len(window) - 1), window[1:]].sum()
        kl += (np.exp(rp) * (rp - lp)).sum()
        agree += (rp.argmax(-1) == lp.argmax(-1)).sum()
        count += len(window) - 1
    return np.exp(nll / count), kl / count, agree / count


def test_metrics_match_hand_computation(tmp_path, tiny_text):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, seed=1), backend="numpy")
    reference, _ = mlx_slm.load(tiny_model_folder(tmp_path, seed=2), backend="numpy")
    report = mlx_slm.evaluate(model, tokenizer, tiny_text, reference=reference, seq_len=64, max_windows=3,
                              decode_tokens=4, progress=False)
    ppl, kld, top1 = hand_metrics(model, reference, token_windows(tokenizer, tiny_text, 64, 3))
    assert report["ppl"] == pytest.approx(ppl, rel=1e-4)
    assert report["kld"] == pytest.approx(kld, rel=1e-3) and report["kld"] > 0.01
    assert report["top1"] == pytest.approx(top1)
    assert report["windows"] == 3 and report["scored_tokens"] == 3 * 63
    assert report["bpw"] == 16.0 and report["tokens_per_s"] > 0 and report["peak_memory_bytes"] > 0


def test_model_against_itself(tmp_path, tiny_text):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    report = mlx_slm.evaluate(model, tokenizer, tiny_text, reference=model, seq_len=32, max_windows=2,
                              decode_tokens=0, progress=False)
    assert abs(report["kld"]) < 1e-6 and report["top1"] == 1.0 and report["tokens_per_s"] is None


def test_bits_per_weight_and_size(tmp_path, tiny_text):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    float_size = mlx_slm.stats.weight_stats(model)["size_bytes"]
    mlx_slm.quantize(model, bits=4, group_size=64, progress=False)
    stats = mlx_slm.stats.weight_stats(model)
    assert stats["bpw"] == pytest.approx(4 + 2 * 16 / 64)
    matrices = 263 * 128 + 2 * (128 * 128 + 2 * 64 * 128 + 128 * 128 + 3 * 192 * 128)
    assert stats["matrix_weights"] == matrices
    norms = (2 * 2 + 1) * 128 * 2  # float16 norm weights stay
    assert stats["size_bytes"] == matrices * 4.5 / 8 + norms and float_size == matrices * 2 + norms


@pytest.mark.mlx
def test_mlx_and_numpy_agree(tmp_path, tiny_text):
    folder = tiny_model_folder(tmp_path, "qwen2")
    reports = []
    for backend in ("mlx", "numpy"):
        model, tokenizer = mlx_slm.load(folder, backend=backend)
        mlx_slm.quantize(model, bits=3, group_size=32, progress=False)
        reports.append(mlx_slm.evaluate(model, tokenizer, tiny_text, seq_len=64, max_windows=2,
                                        decode_tokens=2, progress=False, cpu_engine="mlx"))
    assert [r["engine"] for r in reports] == ["mlx", "numpy"]
    assert reports[0]["ppl"] == pytest.approx(reports[1]["ppl"], rel=1e-4)
    assert reports[0]["bpw"] == reports[1]["bpw"] == pytest.approx(4.0)


@pytest.mark.mlx
def test_cpu_engines_agree_on_an_mlx_model(tmp_path, tiny_text):
    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="mlx")
    mlx_slm.quantize(model, bits=4, group_size=32, progress=False)
    by_engine = {engine: mlx_slm.evaluate(model, tokenizer, tiny_text, seq_len=64, max_windows=2, decode_tokens=2,
                                          progress=False, cpu_engine=engine) for engine in ("numpy", "mlx")}
    assert by_engine["numpy"]["engine"] == "numpy" and by_engine["mlx"]["engine"] == "mlx"
    assert by_engine["numpy"]["ppl"] == pytest.approx(by_engine["mlx"]["ppl"], rel=1e-4)
    with pytest.raises(SLMError, match="cpu_engine"):
        mlx_slm.evaluate(model, tokenizer, tiny_text, seq_len=64, cpu_engine="gpu", progress=False)


def test_text_inputs(tmp_path):
    _, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    lines = [json.dumps({"text": t}) for t in sample_text(8).split("\n\n")]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    from_jsonl = token_windows(tokenizer, tmp_path / "t.jsonl", 16, None)
    from_list = token_windows(tokenizer, sample_text(8).split("\n\n"), 16, None)
    assert np.array_equal(from_jsonl, from_list) and from_list.shape[1] == 16
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": 1}\n')
    with pytest.raises(SLMError, match="bad.jsonl:2"):
        token_windows(tokenizer, tmp_path / "bad.jsonl", 16, None)
    with pytest.raises(SLMError, match="fewer than one window"):
        token_windows(tokenizer, ["too short"], 512, None)
    with pytest.raises(SLMError, match="no such text file") as missing:
        token_windows(tokenizer, tmp_path / "missing.txt", 16, None)
    assert "list of strings" not in str(missing.value)
    for literal in ("word " * 100, "two\nlines"):  # text given where a path or a list is expected
        with pytest.raises(SLMError, match=r"no such text file: .*pass literal text as a list of strings") as err:
            token_windows(tokenizer, literal, 16, None)
        assert "\n" not in str(err.value) and len(str(err.value)) < 160
