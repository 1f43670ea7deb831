"""The model-access layer: a numpy model and an MLX model of the same folder read and write alike,
and no module outside it tells the two apart by comparing backend names."""

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_model_folder

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.formats import affine, get_format
from mlx_slm.model_access import access, float_dtypes, require_training, stored_arrays

pytest.importorskip("mlx.core")

PACKAGE = Path(mlx_slm.__file__).parent
# Where the backend is an engine choice (which forward pass runs), not a way of holding arrays.
ENGINE_CHOICES = {"model_access.py", "backend.py", "evaluate.py", "export/coreai.py"}


def numpy_arrays(arrays: dict) -> dict:
    return {name: np.asarray(value) for name, value in arrays.items()}


@pytest.fixture
def pair(tmp_path):
    folder = tiny_model_folder(tmp_path, "qwen3")
    return mlx_slm.load(folder, backend="numpy")[0], mlx_slm.load(folder, backend="mlx")[0]


def test_both_models_read_alike(pair):
    numpy_model, mlx_model = (access(model) for model in pair)
    assert {p: tuple(s) for p, s in numpy_model.candidate_layers().items()} == \
           {p: tuple(s) for p, s in mlx_model.candidate_layers().items()}
    assert numpy_model.dtypes() == mlx_model.dtypes()
    assert float_dtypes(pair[0]) == float_dtypes(pair[1])
    mine, theirs = numpy_arrays(numpy_model.arrays()), numpy_arrays(mlx_model.arrays())
    assert mine.keys() == theirs.keys()
    for name in mine:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_writes_land_alike(pair):
    path = "model.layers.0.mlp.down_proj"
    w = np.asarray(access(pair[0]).arrays()[f"{path}.weight"])
    update = {f"{path}.weight": (w * 2).astype(w.dtype)}
    packed = stored_arrays(get_format("affine"), affine.pack(w, 4, 32))
    for model in pair:
        view = access(model)
        view.write(update)
        np.testing.assert_array_equal(np.asarray(view.arrays()[f"{path}.weight"]), update[f"{path}.weight"])
        view.store_layers({path: {"bits": 4, "group_size": 32}}, {path: packed}, "affine")
        assert view.dtypes()[f"{path}.weight"] == np.uint32  # packed codes are not a float parameter
        assert f"{path}.weight" not in float_dtypes(model)
        stored = numpy_arrays(view.arrays())
        for suffix, array in packed.items():
            np.testing.assert_array_equal(stored[f"{path}.{suffix}"], array)


def test_training_needs_an_mlx_model(pair):
    with pytest.raises(SLMError, match="needs MLX: training does not run on the numpy fallback"):
        require_training("learned", pair[1], pair[0])
    require_training("learned", pair[1])


def test_no_backend_name_comparisons_outside_the_access_layer():
    pattern = re.compile(r"backend_of\([^)]*\)\s*[!=]=")
    found = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
             if pattern.search(path.read_text()) and str(path.relative_to(PACKAGE)) not in ENGINE_CHOICES]
    assert found == []
