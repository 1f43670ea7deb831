"""The hand-written package list in pyproject.toml must name every subpackage."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listed_packages() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^packages = \[(.*?)\]", text, re.S | re.M).group(1)
    return set(re.findall(r'"([\w.]+)"', block))


def test_every_subpackage_is_listed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mlx_slm").rglob("__init__.py")}
    for folder in ("kernels", "coreml"):  # top-level folders mapped into the package
        found |= {f"mlx_slm.{folder}" + "".join("." + part for part in p.parent.relative_to(ROOT / folder).parts)
                  for p in (ROOT / folder).rglob("__init__.py")}
    assert found == listed_packages()
