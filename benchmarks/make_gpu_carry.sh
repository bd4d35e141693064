#!/usr/bin/env bash
# Build .gpu_carry/ (ignored by git), what benchmarks/gpu_check.sh needs on a CUDA machine that
# cannot reach a package index: advertorch and pyautoattack unpacked from their wheels (examples
# removed) under .gpu_carry/site/, put on PYTHONPATH there, and the Fashion-MNIST .gz files of
# Debian's dataset-fashion-mnist under .gpu_carry/fashion-mnist/.
#
#   bash benchmarks/make_gpu_carry.sh [PYTHON]     # PYTHON: a python with pip (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
carry=.gpu_carry
rm -rf "$carry"
mkdir -p "$carry/wheels" "$carry/site" "$carry/fashion-mnist"
# the versions pyproject.toml pins; --no-deps: torch, numpy, scipy are on the GPU machine
"$python" -m pip wheel --quiet --no-deps -w "$carry/wheels" "advertorch==0.2.3" "pyautoattack==0.2.0"
for wheel in "$carry"/wheels/*.whl; do
    "$python" -m zipfile -e "$wheel" "$carry/site"
done
rm -rf "$carry/wheels" "$carry"/site/*_examples "$carry"/site/*/examples "$carry"/site/*/tests
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$carry/fashion-mnist/"
du -sh "$carry"
ls "$carry/site" "$carry/fashion-mnist"
