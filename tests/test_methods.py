"""The method registry: QuantizeConfig / Calibration, one module per method, CLI flags derived from the rows."""

import pkgutil
from dataclasses import dataclass

import numpy as np
import pytest
from helpers import sample_text, tiny_model_folder
from test_quantize import assert_same_weights, saved_weights

import mlx_slm
from mlx_slm import Calibration, QuantizeConfig
from mlx_slm.cli import build_parser, main
from mlx_slm.errors import SLMError
from mlx_slm.quant import methods as registry
from mlx_slm.quant.methods import Method, MethodOptions, option
from mlx_slm.quant.methods.gptq import GPTQConfig


def test_every_module_of_the_package_registers_its_method():
    modules = {module.name for module in pkgutil.iter_modules(registry.__path__)}
    assert set(registry.methods()) == modules
    assert list(registry.methods())[:4] == ["rtn", "imatrix", "gptq", "awq"]


def test_config_object_and_keyword_forms_store_the_same_arrays(tmp_path):
    folder = tiny_model_folder(tmp_path)
    calib = [sample_text(12)]
    model, tokenizer = mlx_slm.load(folder, backend="numpy")
    mlx_slm.quantize(model, QuantizeConfig(method="gptq", bits=3, group_size=32,
                                           options={"gptq": GPTQConfig(damp=0.05, act_order=False)}),
                     Calibration(calib, tokenizer, num_samples=2, seq_len=64), progress=False)
    mlx_slm.save(model, tokenizer, tmp_path / "config-form")
    model, tokenizer = mlx_slm.load(folder, backend="numpy")
    mlx_slm.quantize(model, bits=3, group_size=32, method="gptq", gptq_options={"damp": 0.05, "act_order": False},
                     calib=calib, tokenizer=tokenizer, num_samples=2, seq_len=64, progress=False)
    mlx_slm.save(model, tokenizer, tmp_path / "keyword-form")
    assert_same_weights(saved_weights(tmp_path / "config-form"), saved_weights(tmp_path / "keyword-form"))
    recorded = mlx_slm.model_config(model)["mlx_slm"]["gptq"]
    assert recorded == {"damp": 0.05, "block_size": 32, "act_order": False, "grid": "imatrix", "refit": True}


@pytest.mark.parametrize("settings,message", [
    (QuantizeConfig(method="magic"), "'magic' is not available; available: rtn, imatrix, gptq, awq"),
    (QuantizeConfig(method="gptq", options={"blockwise": {"epochs": 1}}),
     "blockwise options are given, but method 'gptq' does not use them"),
    (QuantizeConfig(method="awq", options={"gptq": {"damp": 0.1}}),
     "gptq options are given, but method 'awq' does not use them"),
    (QuantizeConfig(method="blockwise", format="lut", bits=3, group_size=8, options={"blockwise": {"start": "gptq"}}),
     "method 'gptq' supports the affine, ternary and ternary_b3 formats only, not 'lut'"),
    (QuantizeConfig(method="rtn", options={"rtn": {}}), "method 'rtn' has no options"),
    (QuantizeConfig(method="gptq", options={"gptq": {"grid": "kmeans"}}), "gptq grid must be"),
    (QuantizeConfig(method="learned", options={"learned": {"lr": 1}}), r"unknown learned options \['lr'\]"),
])
def test_bad_requests_fail_before_any_model_is_touched(settings, message):
    with pytest.raises(SLMError, match=message):
        settings.check()


def test_start_options_are_filled_and_checked():
    checked = QuantizeConfig(method="learned", options={"learned": {"start": "awq"},
                                                        "awq": {"quantizer": "gptq"}}).check()
    assert set(checked.options) == {"learned", "awq", "gptq"}
    assert checked.options_of("gptq") == GPTQConfig()
    assert set(QuantizeConfig(method="blockwise", format="ternary").check().options) == {"blockwise", "gptq"}
    assert set(QuantizeConfig(method="blockwise", format="lut").check().options) == {"blockwise"}  # imatrix
    polished = QuantizeConfig(method="learned", options={"learned": {"start": "e2e"}, "e2e": {"start": "blockwise"}})
    assert set(polished.check().options) == {"learned", "e2e", "blockwise", "gptq"}


def test_config_and_keywords_together_are_refused(tmp_path):
    model, _ = mlx_slm.load(tiny_model_folder(tmp_path), backend="numpy")
    with pytest.raises(SLMError, match="either a QuantizeConfig or keywords"):
        mlx_slm.quantize(model, QuantizeConfig(), bits=4)


@dataclass
class HalvedConfig(MethodOptions):
    factor: float = option(0.5, "what the weights are multiplied by before rounding")

    def check(self):
        if not 0 < self.factor <= 1:
            raise SLMError(f"halved factor must be in (0, 1], not {self.factor}")
        return self


def halved_run(model, settings, calibration, progress):
    """rtn of the weights times ``factor`` (a method no one would use, to show what a new row gets)."""
    factor = settings.options_of("halved").factor
    for name in [n for n in model.weights if n.endswith(".weight") and model.weights[n].ndim == 2]:
        model.weights[name] = (model.weights[name] * factor).astype(model.weights[name].dtype)
    from dataclasses import replace

    from mlx_slm.quantize import run_method

    return run_method(model, replace(settings, method="rtn"), calibration, progress)


def test_a_new_row_gets_its_cli_flags_help_and_checks(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry._REGISTRY, "halved",
                        Method("halved", "rtn of the weights times a factor", halved_run, HalvedConfig))
    help_text = build_parser()._subparsers._group_actions[0].choices["quantize"].format_help()
    assert "halved: rtn of the weights times a factor" in " ".join(help_text.split())
    assert "--halved-factor" in help_text
    folder = tiny_model_folder(tmp_path)
    argv = ["quantize", str(folder), "-o", str(tmp_path / "h"), "--backend", "numpy", "--method", "halved"]
    assert main(argv + ["--halved-factor", "2"]) == 2
    assert "halved factor must be in (0, 1], not 2.0" in capsys.readouterr().err
    assert main(argv + ["--halved-factor", "0.25"]) == 0
    model, _ = mlx_slm.load(folder, backend="numpy")
    quantized, _ = mlx_slm.load(tmp_path / "h", backend="numpy")
    name = "model.layers.0.mlp.down_proj"
    original = model.weights[f"{name}.weight"].astype(np.float32)
    stored = quantized.weights
    from mlx_slm.formats import affine

    bits, group = 4, 64
    restored = affine.dequantize_codes(affine.unpack_codes(stored[f"{name}.weight"], bits), stored[f"{name}.scales"],
                                       stored[f"{name}.biases"], group, np.float32)
    step = np.abs(stored[f"{name}.scales"].astype(np.float32)).max()
    assert np.abs(restored - 0.25 * original).max() <= step  # within one step of the scaled weights
    assert np.abs(restored - original).max() > 10 * step  # and not the unscaled ones
