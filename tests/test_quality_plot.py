"""benchmarks/quality_plot.py: Pareto front per tool (pure) and the PNG (with matplotlib)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from quality_plot import by_tool, main, pareto_front


def row(method, bpw, kld, bits=None):
    return {"method": method, "bits": bits, "bpw": bpw, "kld": kld}


ROWS = [
    row("rtn", 4.5, 0.40, 4), row("gptq", 4.5, 0.12, 4), row("rtn", 3.5, 2.0, 3), row("gptq", 3.5, 0.64, 3),
    row("gptq @3", 3.0, 0.9), row("gptq @3.2", 3.2, 0.95), row("rtn", 2.5, 12.2, 2),
    row("fp16", 16.0, None), row("mlx-lm rtn", 4.5, 0.41, 4), row("mlx-lm gptq", 4.9, 0.10, 4),
    row("mlx-lm gptq", 3.8, 0.10, 2),
    {"method": "mlx-lm gptq", "bits": 3, "group_size": 64, "error": "AssertionError: Unsupported bits 3"},
]


def test_front_per_tool():
    groups = by_tool(ROWS)
    assert set(groups) == {"mlx_slm", "mlx-lm"}
    assert [r["method"] for r in groups["mlx_slm"]].count("fp16") == 0  # no KL: not plotted
    front = [(r["method"], r["bpw"]) for r in pareto_front(groups["mlx_slm"])]
    # gptq @3.2 loses to gptq @3 (less bpw, less KL); rtn 4.5 and 3.5 lose to gptq at the same bpw
    assert front == [("rtn", 2.5), ("gptq @3", 3.0), ("gptq", 3.5), ("gptq", 4.5)]
    # 3.8 beats rtn 4.5 (lower KL); it ties 4.9's KL, which does not beat 4.9
    assert [r["bpw"] for r in pareto_front(groups["mlx-lm"])] == [3.8, 4.9]


def test_front_of_dominated_and_tied_rows():
    rows = [row("a", 3.0, 1.0), row("b", 3.0, 1.0), row("c", 3.0, 2.0), row("d", 2.0, 0.5)]
    assert [r["method"] for r in pareto_front(rows)] == ["d"]
    assert [r["method"] for r in pareto_front(rows[:3])] == ["a", "b"]
    assert pareto_front([]) == []


def test_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    source = tmp_path / "rows.json"
    source.write_text(json.dumps({"rows": ROWS}))
    png = tmp_path / "plot.png"
    main([str(source), "--png", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "Pareto front of mlx-lm" in printed and "gptq @3" in printed
