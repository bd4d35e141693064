#!/usr/bin/env bash
# The checks that need a CUDA device, in one run: the no-synchronisation test of the step, the
# step timings on the GPU, and one Fashion-MNIST epoch through the engine on the GPU. Output and
# the run directory go to ${OUT:-/tmp/gpu-check}.
#
#   bash benchmarks/gpu_check.sh [DATA_DIR]
#
# DATA_DIR holds FashionMNIST/raw/*-ubyte (torchvision's layout; `rlr train` on a machine with
# Debian's dataset-fashion-mnist stages it into data/). Without one the epoch is skipped.
# Every check runs even when one fails; the exit status is non-zero if any did.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" 2>&1 | tee "$out/device.txt"
python3 -m pytest -q -rs tests/test_device_step.py 2>&1 | tee "$out/test_device_step.txt" || status=1
python3 benchmarks/step_speed.py --device cuda --models lenet5,vgg16 --repeats 15 2>&1 | tee "$out/step_speed.txt" || status=1
if [ -n "${1:-}" ]; then
    python3 -m rlr_engine.cli train fmnist-lenet5-tau0.1-cr80 --device cuda --set epochs=1 \
        --set data_dir="$1" --set attack_samples=500 --runs "$out/runs" 2>&1 | tee "$out/epoch.txt" || status=1
fi
exit $status
