"""The budget planner's pieces: the knapsack is exactly optimal, the probe's fake quantization is
MLX's, and error energies are tr(dW H dW^T)."""

import itertools

import numpy as np
import pytest

from mlx_slm.errors import SLMError
from mlx_slm.formats import affine
from mlx_slm.quant.budget import cheapest_plan
from mlx_slm.quant.sensitivity import error_energies, input_factor, layer_options, rtn_dense
from mlx_slm.quant.sequential import block_index


@pytest.mark.parametrize("seed", range(6))
def test_cheapest_plan_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    costs = [rng.integers(1, 9, size=3) * 64 for _ in range(5)]
    losses = [rng.random(3) for _ in range(5)]
    budget = float(sum(int(c.min()) for c in costs) + rng.integers(0, 700))
    plan = cheapest_plan(costs, losses, budget)
    best = min((sum(loss[o] for loss, o in zip(losses, options)), options)
               for options in itertools.product(range(3), repeat=5)
               if sum(c[o] for c, o in zip(costs, options)) <= budget)
    assert sum(c[o] for c, o in zip(costs, plan)) <= budget
    assert sum(loss[o] for loss, o in zip(losses, plan)) == pytest.approx(best[0], abs=1e-12)


def test_cheapest_plan_refuses_an_impossible_budget():
    with pytest.raises(SLMError, match="fits the budget"):
        cheapest_plan([np.array([100, 200])], [np.array([1.0, 0.0])], 99)


@pytest.mark.parametrize("bits,group_size", [(2, 32), (3, 64), (4, 64), (8, 128)])
def test_probe_rounding_is_pack_then_unpack(bits, group_size):
    w = (np.random.default_rng(bits).standard_normal((24, 256)) * 0.05).astype(np.float16)
    expected = affine.unpack(*affine.pack(w, bits, group_size), bits, group_size, dtype=np.float32)
    np.testing.assert_array_equal(rtn_dense(w, {"bits": bits, "group_size": group_size}), expected)


def test_error_energy_is_the_trace_through_the_input_moments():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 128)).astype(np.float32)
    x = rng.standard_normal((300, 128)).astype(np.float32) * np.linspace(0.1, 3, 128, dtype=np.float32)
    options, unavailable = layer_options(w.shape)
    assert not unavailable and options[0] == {"bits": 2, "group_size": 128}
    energies = error_energies(w, options, input_factor(x))
    moments = x.T.astype(np.float64) @ x / len(x)
    for settings, energy in zip(options, energies):
        delta = rtn_dense(w, settings) - w
        assert energy == pytest.approx(np.trace(delta @ moments @ delta.T), rel=1e-4)
    coarse, fine = options.index({"bits": 2, "group_size": 128}), options.index({"bits": 8, "group_size": 32})
    assert energies[coarse] > energies[fine]


@pytest.mark.parametrize("path, block", [("model.layers.3.mlp.up_proj", 3), ("model.layers.11", 11),
                                         ("language_model.model.layers.12.self_attn.q_proj", 12),
                                         ("model.embed_tokens", None), ("lm_head", None), ("model.layers", None),
                                         ("model.norm.layers.x", None)])
def test_block_index_reads_the_number_after_layers(path, block):
    # sensitivity and sequential calibration share this rule (mlx-lm's layout, or nested deeper)
    assert block_index(path) == block
