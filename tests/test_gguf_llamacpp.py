"""llama.cpp runs our GGUF files: it loads each one, tokenizes text as our tokenizer does (so the
file's ``tokenizer.*`` metadata is right), and its logits on a prompt match MLX's (float32) on the same
weights within a stated tolerance.

Needs llama-cpp-python, which builds llama.cpp from source (``pip install llama-cpp-python``; see the
README's GGUF export section); the module is skipped where it does not import.
"""

import numpy as np
import pytest
from helpers import sample_text, tiny_config, tiny_weights, write_model_folder

import mlx_slm
from mlx_slm.export.gguf import gguf_name
from mlx_slm.export.weights import ModelWeights

try:
    import llama_cpp
except Exception as err:  # not installed, or its shared library missing or not loadable
    pytest.skip(f"llama.cpp checks need llama-cpp-python (pip install llama-cpp-python, a source build of "
                f"llama.cpp; see the README's GGUF export section): {type(err).__name__}: {err}",
                allow_module_level=True)

mx = pytest.importorskip("mlx.core", reason="the reference logits come from MLX")

# Largest and RMS |llama.cpp - MLX| logit, as fractions of the RMS of MLX's logits. ggml's CPU dot products
# round activations to float16 for float16 weights, and to 8-bit blocks (Q8_0/Q8_1/Q8_K) for quantized
# weights, hence the looser bound there; a wrong block layout or scale gives errors near 1.
TOLERANCE = {"float": (0.01, 0.002), "quantized": (0.4, 0.05)}
TEXTS = ("Hello World! It's 2024: 12345 apples, DON'T print(value)", "ünïcödé 日本語 🙂\n\n\tindented   spaces\r\n",
         " the quick brown fox", "x=1;y==2 ...end", "<|im_start|>user\nhi<|im_end|>")
CASES = {  # name: (mlx_slm.quantize settings, export_gguf keyword arguments)
    "f16": ({}, {}),
    "q8_0": ({}, {"types": "q8_0"}),
    "q4_1": ({"bits": 4, "group_size": 32}, {}),
    "q5_1": ({"bits": 5, "group_size": 64}, {}),
    "q4_k_m": ({}, {"kquant": "q4_k_m"}),
    "q3_k_m": ({}, {"kquant": "q3_k_m"}),
    "q2_k": ({}, {"kquant": "q2_k"}),
    "legacy": ({}, {"kquant": "legacy"}),  # every 32-weight block type, by a per-tensor plan
    "iq4_nl": ({}, {"kquant": "iq4_nl"}),  # IQ4_NL everywhere (per-tensor plan), packed by mlx_slm.export.iq4_nl
}
LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def llama(path):
    return llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False)


def llama_logits(llm, ids) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], np.float32)


def mlx_logits(model, ids) -> np.ndarray:
    model.set_dtype(mx.float32)  # float16 values (and quantized layers' scales) stay exact
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def check_logits(llm, model, ids, weights: str) -> None:
    """llama.cpp's logits over ``ids`` are MLX's within ``TOLERANCE[weights]`` and mostly agree on the top token."""
    want = mlx_logits(model, ids)
    got = llama_logits(llm, ids)
    assert got.shape == want.shape
    scale = np.sqrt(np.mean(np.square(want)))
    largest, rms = np.abs(got - want).max() / scale, np.sqrt(np.mean(np.square(got - want))) / scale
    assert largest < TOLERANCE[weights][0] and rms < TOLERANCE[weights][1], (largest, rms)
    assert np.mean(got.argmax(-1) == want.argmax(-1)) > 0.9


def check_tokenizer(llm, tokenizer, texts) -> None:
    """llama.cpp's tokenizer (built from the file's metadata) splits ``texts`` as ours does, special
    tokens included, adds BOS as ours does, and decodes back to the same bytes."""
    for text in texts:
        ours = tokenizer.encode(text, add_special_tokens=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer.encode(text), text
        assert llm.detokenize(ours, special=True) == text.encode(), text


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A llama model whose matrices have rows of 256 or 512 weights (whole k-quant super-blocks)."""
    config = tiny_config("llama", vocab_size=270, hidden_size=256, intermediate_size=512, head_dim=64)
    return write_model_folder(tmp_path_factory.mktemp("llamacpp") / "tiny", config, tiny_weights(config, 3))


@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_runs_the_export(tmp_path, tiny_folder, case):
    """llama.cpp loads the file; its logits are MLX's on the model exported (float, or affine layers
    kept exactly) or, where the export quantized (q8_0, k-quants), on the file as mlx_slm.load reads it."""
    settings, export = CASES[case]
    model, tokenizer = mlx_slm.load(tiny_folder, progress=False)
    if settings:
        mlx_slm.quantize(model, progress=False, **settings)
    path = tmp_path / f"{case}.gguf"
    if export.get("kquant") in ("legacy", "iq4_nl"):
        names = [name for name, value in dict(ModelWeights(model)).items() if value.ndim == 2]
        kinds = LEGACY if export["kquant"] == "legacy" else ("IQ4_NL",)
        export = {"kquant": {gguf_name(name): kinds[i % len(kinds)] for i, name in enumerate(names)}}
    report = mlx_slm.export_gguf(model, tokenizer, path, **export)
    if report.errors():
        model, _ = mlx_slm.load(path, dtype="float32", progress=False)
    llm = llama(path)
    check_logits(llm, model, tokenizer.encode(sample_text(3, seed=4), add_special_tokens=False)[:96],
                 "float" if case == "f16" else "quantized")
    check_tokenizer(llm, tokenizer, TEXTS)


@pytest.mark.slow
def test_llama_cpp_runs_smollm2(tmp_path):
    """SmolLM2-135M (its real vocabulary and chat template) at F16 and Q4_1 (4-bit g32)."""
    from mlx_slm.io.packaged import smollm2_gguf

    for case in ("f16", "q4_1"):
        model, tokenizer = mlx_slm.load(smollm2_gguf(), progress=False)
        if CASES[case][0]:
            mlx_slm.quantize(model, progress=False, **CASES[case][0])
        path = tmp_path / f"{case}.gguf"
        mlx_slm.export_gguf(model, tokenizer, path)
        llm = llama(path)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               add_generation_prompt=True)
        check_logits(llm, model, prompt, "float" if case == "f16" else "quantized")
        check_tokenizer(llm, tokenizer, TEXTS + (sample_text(2, seed=1),))
