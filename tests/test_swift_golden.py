"""SLMKit's committed golden fixtures are what ``swift/scripts/make_golden.py`` writes now.

The Swift tests read ``swift/Tests/SLMKitTests/Fixtures/`` straight from the clone (``swift
test`` cannot run Python), so the fixtures are committed; this test regenerates them into a
temporary folder (the SentencePiece goldens need the Gemma 3 GGUF) and compares bytes, so a change
to the script, to ``transformers``/``tokenizers`` or to the reference data cannot leave them stale.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")
pytest.importorskip("jinja2", reason="apply_chat_template needs jinja2")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "swift" / "scripts" / "make_golden.py"
FIXTURES = ROOT / "swift" / "Tests" / "SLMKitTests" / "Fixtures"


def load_script():
    spec = importlib.util.spec_from_file_location("make_golden", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_committed_fixtures_equal_a_fresh_run(smollm2_path, gemma3_path, tmp_path):
    load_script().main(tmp_path)
    committed, fresh = files(FIXTURES), files(tmp_path)
    assert sorted(committed) == sorted(fresh)
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"stale fixtures {stale}: run python swift/scripts/make_golden.py and commit the result"
