"""KL vs bits per weight of quantization benchmark rows, with each tool's Pareto front.

    python benchmarks/quality_plot.py runs/quality/quality.json runs/baselines/mlx_lm.json
        [--png runs/quality/quality.png]

Reads the "rows" of each JSON file (benchmarks/quantization_quality.py's quality.json,
benchmarks/mlx_lm_baselines.py's mlx_lm.json). Rows whose method starts with
"mlx-lm " belong to mlx-lm, the others to mlx_slm; rows without a KL (the fp16
reference, failed runs) are left out. A row is on its tool's Pareto front when no
other row of that tool has lower-or-equal bpw and lower KL. Prints each front and,
with matplotlib (the ``bench`` extra), writes a PNG: KL on a log scale against bpw,
every point labelled, each front drawn as a step line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MLX_LM_PREFIX = "mlx-lm "


def tool_of(row: dict) -> str:
    return "mlx-lm" if row["method"].startswith(MLX_LM_PREFIX) else "mlx_slm"


def plottable(rows: list[dict]) -> list[dict]:
    """Rows with both a bpw and a KL."""
    return [r for r in rows if r.get("kld") is not None and r.get("bpw") is not None]


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats (lower-or-equal bpw and lower KL), sorted by bpw then KL."""
    front = [r for r in rows
             if not any(o["bpw"] <= r["bpw"] and o["kld"] < r["kld"] for o in rows if o is not r)]
    return sorted(front, key=lambda r: (r["bpw"], r["kld"]))


def by_tool(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in plottable(rows):
        groups.setdefault(tool_of(row), []).append(row)
    return groups


def label(row: dict) -> str:
    name = row["method"].removeprefix(MLX_LM_PREFIX)
    return f"{name} {row['bits']}b" if row.get("bits") else name


def front_text(groups: dict[str, list[dict]]) -> str:
    lines = []
    for tool, rows in groups.items():
        lines.append(f"Pareto front of {tool} ({len(rows)} rows):")
        lines += [f"  {r['bpw']:6.2f} bpw  KL {r['kld']:8.4f}  {label(r)}" for r in pareto_front(rows)]
    return "\n".join(lines)


def plot(groups: dict[str, list[dict]], png: Path) -> None:
    """Write the KL-vs-bpw figure (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    styles = (("tab:blue", "o"), ("tab:orange", "s"), ("tab:green", "^"), ("tab:red", "D"))
    for (tool, rows), (color, marker) in zip(groups.items(), styles):
        ax.scatter([r["bpw"] for r in rows], [r["kld"] for r in rows], color=color, marker=marker, s=20,
                   alpha=0.6)
        front = pareto_front(rows)
        ax.step([r["bpw"] for r in front], [r["kld"] for r in front], where="post", color=color,
                label=f"{tool} Pareto front")
        for r in rows:
            ax.annotate(label(r), (r["bpw"], r["kld"]), fontsize=7, color=color,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (matrices)")
    ax.set_ylabel("KL(fp16 || quantized), nats per token")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=130, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="JSON files with a \"rows\" list")
    parser.add_argument("--png", default="quality.png", help="figure to write (default: %(default)s)")
    args = parser.parse_args(argv)
    rows = []
    for name in args.json:
        try:
            rows += json.loads(Path(name).read_text())["rows"]
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"cannot read rows from {name}: {err}") from None
    groups = by_tool(rows)
    if not groups:
        raise SystemExit("no row has both a bpw and a KL")
    print(front_text(groups))
    try:
        plot(groups, Path(args.png))
    except ImportError as err:
        print(f"no figure: {err} (pip install 'mlx-slm[bench]')")
        return
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
