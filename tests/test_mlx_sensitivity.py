"""target_bpw's sensitivity pass on the calibration engine: on MLX (mlx-lm's own blocks) it measures what
the numpy engine measures on the Llama family, and it runs architectures the numpy engine cannot (Gemma 3),
where each probe's dKL is the KL of the model's own forward pass with that one layer rounded."""

import numpy as np
import pytest
from helpers import sample_text
from test_mlx_calibration import gemma3_folder, llama_folder, windows

import mlx_slm
from mlx_slm.evaluate import log_softmax
from mlx_slm.model_access import access, model_config
from mlx_slm.quant.budget import plan_for_budget
from mlx_slm.quant.sensitivity import mean_kld, measure_sensitivity, rtn_dense
from mlx_slm.stats import weight_stats

pytestmark = pytest.mark.mlx

# MLX engine vs numpy engine on float16 tiny Llamas, 2 x 32 tokens, relative differences (measured: probe
# dKL within 1.2e-5, error energies within 1.3e-7): float32 blocks on both, summed in a different order
KLD_TOLERANCE = 1e-4
ENERGY_TOLERANCE = 1e-5
# a probe's dKL vs the KL of mlx-lm's full forward pass with the layer rounded (float32 Gemma 3: the engine
# computes what the model does: measured equal)
FORWARD_TOLERANCE = 1e-3


def compared(sensitivities, extract):
    """Largest relative difference of ``extract(layer)`` (role -> value) between the two engines."""
    numpy, mlx = sensitivities["numpy"].layers, sensitivities["mlx"].layers
    assert numpy.keys() == mlx.keys()
    return max(float(np.max(np.abs(np.asarray(extract(mlx[path])[role]) - value) / np.abs(value)))
               for path, layer in numpy.items() for role, value in extract(layer).items())


@pytest.mark.parametrize("case", ["llama", "llama-untied"])
def test_mlx_engine_measures_what_the_numpy_engine_does(tmp_path, case):
    model, _ = mlx_slm.load(llama_folder(tmp_path, case), backend="mlx", progress=False)
    tokens = windows(2, 32)
    found = {engine: measure_sensitivity(model, tokens, progress=False, cpu_engine=engine)
             for engine in ("numpy", "mlx")}
    assert {engine: s.engine for engine, s in found.items()} == {"numpy": "numpy", "mlx": "mlx"}
    roles = {path: sorted(layer.probe_kld) for path, layer in found["mlx"].layers.items() if "layers" not in path}
    assert roles == ({"model.embed_tokens": ["embedding", "head"]} if case == "llama" else
                     {"lm_head": ["head"], "model.embed_tokens": ["embedding"]})
    assert compared(found, lambda layer: layer.probe_kld) < KLD_TOLERANCE
    assert compared(found, lambda layer: layer.energy) < ENERGY_TOLERANCE
    for target in (3.0, 3.5, 4.25):
        assert plan_for_budget(found["mlx"], target)[0] == plan_for_budget(found["numpy"], target)[0], target


def forward_kld(model, tokens, path, weight) -> float:
    """KL(float || model with layer ``path`` computing ``weight``) per token, from mlx-lm's forward pass."""
    import mlx.core as mx

    reference = log_softmax(np.array(model(mx.array(tokens)), np.float32))
    module = dict(model.named_modules())[path]
    original = module.weight
    module.weight = mx.array(weight)
    try:
        logits = np.array(model(mx.array(tokens)), np.float32)
    finally:
        module.weight = original
    return mean_kld(np.exp(reference), reference, logits)


def test_gemma3_probes_are_the_models_own_kl(tmp_path):
    """Each probed block layer's dKL is the KL of the whole model with that layer alone rounded: a rerun
    that skipped or misplaced the probed block, or ran a block without its sliding-window mask, would not
    give it (layers 0 and 1 slide over 8 of the 32 tokens, layer 2 is global)."""
    model, _ = mlx_slm.load(gemma3_folder(tmp_path), backend="mlx", progress=False)
    tokens = windows(4, 32)
    sensitivity = measure_sensitivity(model, tokens, progress=False)
    assert sensitivity.engine == "mlx"
    weights = access(model).numpy_weights()
    for path in ("model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj", "model.layers.2.self_attn.q_proj"):
        layer = sensitivity.layers[path]
        probed = rtn_dense(weights[f"{path}.weight"], layer.options[layer.probe])
        expected = forward_kld(model, tokens, path, probed)
        assert abs(layer.probe_kld["block"] - expected) < FORWARD_TOLERANCE * expected, (path, layer.probe_kld)


def test_gemma3_quantizes_to_a_bpw_target(tmp_path):
    """quantize(target_bpw=...) plans from the MLX engine's sensitivities and stores the planned bits; of two
    layers of one shape, the one whose probe costs 10x more never gets fewer bits."""
    target = 4.5
    model, tokenizer = mlx_slm.load(gemma3_folder(tmp_path), backend="mlx", progress=False)
    mlx_slm.quantize(model, target_bpw=target, calib=[sample_text(60)], tokenizer=tokenizer, num_samples=4,
                     seq_len=32, progress=False)
    plan = model_config(model)["mlx_slm"]["plan"]
    assert plan["sensitivity_engine"] == "mlx" and plan["bpw"] <= target
    assert abs(weight_stats(model)["bpw"] - target) <= 0.01
    rows = {row["layer"]: row for row in plan["layers"]}
    assert len({row["choice"] for row in rows.values()}) >= 2
    blocks = [row for row in rows.values() if "block" in row["probe_kld"]]
    for shape in {tuple(row["shape"]) for row in blocks}:
        same = [row for row in blocks if tuple(row["shape"]) == shape]
        costly = max(same, key=lambda row: row["probe_kld"]["block"])
        cheap = min(same, key=lambda row: row["probe_kld"]["block"])
        if costly["probe_kld"]["block"] > 10 * cheap["probe_kld"]["block"]:
            assert costly["bpw"] >= cheap["bpw"], (costly, cheap)
