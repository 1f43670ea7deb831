"""The low-bit training table from the kept results, at the benchmark's default budget or a larger one.

    python benchmarks/lowbit_summary.py [RESULT.json ...] [--out runs/lowbit_summary.json]

``benchmarks/lowbit_training.py`` was run many times, a few rows at a time, as the recipes
changed. This reads its kept JSON files (by default those in benchmarks/results/smollm2, oldest
first) and prints, for every row and recipe, the last measurement taken at the benchmark's
default settings (32 x 256 calibration windows, 2 block-wise epochs at rate 1e-3 on the
quantized model's inputs, 40 end-to-end steps of 4 x 256 tokens at the e2e method's rate for
the row's bits, 8 x 512 evaluation tokens), with the file it came from: a later file's row
replaces an earlier one. Rows calibrated or trained on text sampled from the float model
(``--start-data``, ``--blockwise-data``, ``--e2e-data teacher``) are recipes of their own, the
parts so done marked "/teacher" (a start so calibrated named in front of every recipe from it).
Rows run with more (or fewer) calibration windows, end-to-end steps or learned windows are shown too, as recipes
of their own, the budget named after the recipe ("gptq/teacher+e2e/teacher (128 windows, 120
steps)"); rows run with other settings (another rate, adoption forced, ...) are left out, and the
README quotes them where it discusses them. Then each of issue 19's targets against the best row
of its format, whatever its budget (the tokens column states it).
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "smollm2"
KEPT = ("lowbit_training.json", "lowbit_training_e2e.json", "lowbit_training_128windows.json",
        "lowbit_training_adopt.json", "lowbit_training_noadopt.json", "lowbit_training_bwe2e.json",
        "lowbit_training_g32.json", "lowbit_training_embed4.json", "lowbit_training_ternary_gptq.json",
        "lowbit_training_ternary_e2e.json", "lowbit_training_lut3.json", "lowbit_training_affine4.json",
        "lowbit_training_lut4.json", "lowbit_training_gradients.json", "lowbit_training_g64_rerun.json",
        "lowbit_training_teacher.json", "lowbit_training_teacher_more.json", "lowbit_training_start_teacher.json",
        "lowbit_training_start_teacher_120steps.json", "lowbit_training_start_teacher_128windows.json",
        "lowbit_training_learned.json", "lowbit_training_e2e_learned.json", "lowbit_training_learned512.json",
        "lowbit_training_learned400.json", "lowbit_training_bpw25.json", "lowbit_training_rerun.json")
BY_ROW = ("e2e_lr", "e2e_adopt")  # defaults that depend on the row: checked in at_defaults
VARIANTS = ("start_data", "blockwise_data", "e2e_data")  # settings a row may differ in and still be shown, as a
# recipe of its own
TEACHER = "/teacher"  # marks a recipe's part (the start, blockwise, e2e) calibrated or trained on text sampled from
# the float model
BUDGETS = (("num_samples", "windows"), ("e2e_steps", "steps"), ("learned_samples", "learned windows"),
           ("learned_steps", "learned steps"))
# settings a row may differ in and still be shown, named after its recipe (each but the windows only where the
# recipe has the part it is the budget of)
PART_OF = {"e2e_steps": "e2e", "learned_samples": "learned", "learned_steps": "learned"}
RECIPES = ("blockwise", "e2e", "blockwise+e2e", "learned", "e2e+learned")  # after the start's row
# (row, what is measured, bound, as the issue words it); "ppl_x" is PPL / fp16's PPL
TARGETS = (("affine:2:64", "ppl_x", 2.5, "2-bit g64: PPL at most 2.5x fp16"),
           ("affine:3:64", "kld", 0.25, "3-bit g64: KL at most 0.25"),
           ("affine:4:64", "kld", 0.05, "4-bit g64: KL at most 0.05 (and top-1 at least 88%)"),
           ("ternary:2:0", "ppl_x", 10.0, "ternary: PPL at most 10x fp16"))


@cache
def parser_defaults() -> dict:
    """Every setting's default, read off the benchmark's own parser (a setting a file lacks predates it);
    built once, read for every row (not to be changed)."""
    from lowbit_training import RUN_ONLY, build_parser

    return {k: v for k, v in vars(build_parser().parse_args([])).items() if k not in RUN_ONLY}


def defaults() -> dict:
    """The settings a shown row must have at their defaults: all but the variants and budgets."""
    shown = BY_ROW + VARIANTS + tuple(key for key, _ in BUDGETS)
    return {k: v for k, v in parser_defaults().items() if k not in shown}


def at_defaults(settings: dict, row: dict) -> bool:
    """Whether ``row`` was measured at the default budget: the settings the file names are the benchmark's
    defaults, its end-to-end rate and adoption (if given) the e2e method's for the row's bits and start (a
    bpw row's planned bits are not in the file: only the method's own rate counts as its default)."""
    from mlx_slm.quant.methods.blockwise import default_start
    from mlx_slm.quant.methods.e2e import default_adopt, default_rate

    if any(settings.get(key, value) != value for key, value in defaults().items()):
        return False
    if "e2e" not in row["recipe"]:
        return True
    start = "blockwise" if row["recipe"] == "blockwise+e2e" else default_start(row["format"])
    return (settings.get("e2e_lr") in (None, default_rate(row["bits"]) if "bits" in row else None)
            and settings.get("e2e_adopt") in (None, default_adopt(start)))


def label(settings: dict, row: dict) -> str:
    """The row's recipe as the table names it: each part (blockwise, e2e) trained on the float model's text
    marked so ("blockwise/teacher+e2e/teacher"); a start calibrated on it is marked and named first in
    every recipe from it ("gptq/teacher+e2e/teacher"); a budget other than the default is named after
    it ("e2e (120 steps)")."""
    from mlx_slm.quant.methods.blockwise import default_start

    data = {"blockwise": settings.get("blockwise_data"), "e2e": settings.get("e2e_data")}
    start = settings.get("start_data")
    parts = row["recipe"].split("+")
    if start == "teacher" and parts[0] in RECIPES:
        parts = [default_start(row["format"])] + parts
    recipe = "+".join(part + (TEACHER if data.get(part, start) == "teacher" else "") for part in parts)
    usual = parser_defaults()
    budget = [f"{settings[key]} {unit}" for key, unit in BUDGETS
              if settings.get(key, usual[key]) != usual[key] and PART_OF.get(key, "") in row["recipe"]]
    return recipe + (f" ({', '.join(budget)})" if budget else "")


def order(item) -> tuple:
    """By row, then recipe as the benchmark orders them (whatever the start), then text, then budget."""
    (name, recipe), _ = item
    parts = recipe.split(" (")[0].replace(TEACHER, "").split("+")
    base = "+".join(parts[1:] if len(parts) > 1 and parts[0] not in RECIPES else parts)
    return name, RECIPES.index(base) + 1 if base in RECIPES else 0, recipe.count(TEACHER), recipe


def collect(paths: list[Path]) -> tuple[dict, float]:
    """(row, recipe) -> the last row at the default settings or a shown budget (with its "source"), and
    fp16's PPL."""
    table, fp16 = {}, None
    for path in paths:
        kept = json.loads(path.read_text())
        for run in kept.get("runs", [kept]):
            for row in run["rows"]:
                if row["recipe"] == "fp16":
                    fp16 = row["ppl"]
                elif at_defaults(run["settings"], row):
                    recipe = label(run["settings"], row)
                    table[(row["row"], recipe)] = {**row, "recipe": recipe, "source": path.name}
    return table, fp16


def lines(table: dict, fp16: float) -> list[str]:
    wide = max([len("recipe")] + [len(recipe) for _, recipe in table]) + 2
    source = max([len("source")] + [len(r["source"]) for r in table.values()]) + 2
    header = (f"{'row':<14}{'recipe':<{wide}}{'bpw':>6}{'PPL':>13}{'x fp16':>8}{'KL':>9}{'top-1':>8}{'tokens':>9}"
              f"{'train s':>8}  {'source':<{source}}held-out KL every 10 steps (10k tokens), from 0")
    out = [header, "-" * len(header)]
    for (name, recipe), r in sorted(table.items(), key=order):
        curve = r.get("e2e_heldout_kl") or []
        shown = ", ".join(([] if not curve or curve[0][0] == 0 else ["?"]) + [f"{kl:.3f}" for _, kl in curve]) or "-"
        out.append(f"{name:<14}{recipe:<{wide}}{r['bpw']:>6.2f}{r['ppl']:>13.2f}{r['ppl'] / fp16:>8.1f}"
                   f"{r['kld']:>9.4f}{r['top1']:>8.1%}{r['tokens']:>9}{r['train_seconds']:>8.0f}  "
                   f"{r['source']:<{source}}{shown}")
    return out


def measured(row: dict, measure: str, fp16: float) -> float:
    return row["ppl"] / fp16 if measure == "ppl_x" else row[measure]


def targets(table: dict, fp16: float) -> list[dict]:
    """Each target with the best row of its format and whether that row meets it."""
    out = []
    for name, measure, bound, words in TARGETS:
        rows = [r for (row, _), r in table.items() if row == name]
        if not rows:
            continue
        best = min(rows, key=lambda r: measured(r, measure, fp16))
        value = measured(best, measure, fp16)
        met = value <= bound and (name != "affine:4:64" or best["top1"] >= 0.88)
        out.append({"target": words, "best_recipe": best["recipe"], "value": value, "bound": bound,
                    "top1": best["top1"], "met": met, "source": best["source"]})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", type=Path, help="lowbit_training JSON files, oldest first")
    parser.add_argument("--out", type=Path, default=Path("runs/lowbit_summary.json"))
    args = parser.parse_args(argv)
    paths = args.results or [RESULTS / name for name in KEPT if (RESULTS / name).is_file()]
    table, fp16 = collect(paths)
    if fp16 is None:
        parser.error("no fp16 row in the given results")
    print(f"fp16 PPL {fp16:.3f}; a curve starting with '?': its start was scored on other windows (before a23c788)")
    print("\n".join(lines(table, fp16)))
    print()
    goals = targets(table, fp16)
    wide = max([len(goal["best_recipe"]) for goal in goals], default=0)
    for goal in goals:
        shown = f"{goal['value']:.1f}x" if "x fp16" in goal["target"] else f"{goal['value']:.4f}"
        print(f"{goal['target']:<55} best {goal['best_recipe']:<{wide}} {shown:>9}  top-1 {goal['top1']:.1%}  "
              f"{'met' if goal['met'] else 'missed'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"fp16_ppl": fp16, "files": [p.name for p in paths], "targets": goals,
                                    "rows": [{k: r[k] for k in ("row", "recipe", "bpw", "ppl", "kld", "top1",
                                                                "tokens", "train_seconds", "source")}
                                             | {"heldout_curve": r.get("e2e_heldout_kl")}
                                             for r in table.values()]}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
