#!/usr/bin/env bash
# Every test: the lint (ruff, pyproject's rules), Python with MLX, Python with MLX absent (numpy
# fallback), and the Swift package.
#   bash tests/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

bash examples/setup_env.sh .venv
bash examples/setup_env.sh .venv-nomlx --no-mlx

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== Lint: ruff check (rules in pyproject.toml)"
.venv/bin/ruff check .

# Two workers (pytest-xdist): most tests run on one core, and CI has two.
echo "== Python tests with MLX"
.venv/bin/python -m pytest -q -n 2 --durations=15 tests | tee -a "$log"

echo "== Python tests without MLX (numpy fallback)"
MLX_SLM_EXPECT_NO_MLX=1 .venv-nomlx/bin/python -m pytest -q -n 2 tests | tee -a "$log"

if [ -f swift/Package.swift ]; then
  echo "== Swift tests (golden fixtures committed; tests/test_swift_golden.py checks they are current)"
  swift test --package-path swift --disable-swift-testing 2>&1 | tee -a "$log"
fi
# pytest's "N passed" lines and XCTest's "Executed N tests" line, summed.
passed=$(grep -oE '[0-9]+ passed' "$log" | awk '{n += $1} END {print n + 0}')
xctest=$(grep -E "Suite 'All tests' passed" -A1 "$log" | grep -oE 'Executed [0-9]+' | awk '{n += $2} END {print n + 0}')
echo "all tests passed in $((SECONDS - start)) s"
echo "$((passed + xctest)) passed, 0 failed"
