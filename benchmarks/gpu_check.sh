#!/usr/bin/env bash
# Every check that needs a CUDA device, in one run, each written to its own file under $OUT
# (default /tmp/gpu-check):
#   1. the tests that run only on CUDA, and the CUDA set-up tests (tests-cuda.txt);
#   2. step_speed.py --device cuda, batch 128 (LeNet5, VGG16) and 1024 (VGG16): dense, τ = ∞,
#      CondLR τ = 0 / 0.1 on both paths, channels-last, bf16, captured as CUDA graphs, and
#      bf16 + graphs, and the low-rank layers' forward composed and chosen per layer by timing
#      (step-speed-b128.txt, step-speed-vgg16-b1024.txt);
#   3. one Fashion-MNIST epoch of fmnist-lenet5-tau0.1-cr80 through the engine, float32 and bf16
#      (epoch-float32.txt, epoch-bf16.txt; samples/s in the run's events under runs/);
#   4. torchrun --nproc-per-node 1 on NCCL (torchrun.txt);
#   5. LeNet5 with the whole step compiled by torch.compile(mode="reduce-overhead") next to the
#      captured step (step-speed-reduce-overhead.txt; last, as its compilation may run long).
#
#   bash benchmarks/gpu_check.sh              # on the CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: the same commands, tiny and on the CPU
#
# .gpu_carry/ (benchmarks/make_gpu_carry.sh) supplies advertorch, pyautoattack and the
# Fashion-MNIST files where the machine has no package index; without it the epoch is skipped.
# Every check runs even when one fails, each under a time limit; the exit status is non-zero if any
# failed. The whole run is sized to finish in about 9 minutes on one H100.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD:$PWD/.gpu_carry/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
status=0

check() {  # check NAME SECONDS COMMAND...: run it, its output to $out/NAME.txt, note failures
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$out/$name.txt"
    local start=$SECONDS
    timeout -k 15 "$limit" "$@" >>"$out/$name.txt" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$name.txt" "$out/summary.txt"
    [ $rc -eq 0 ] || status=1
}

if [ $dry -eq 1 ]; then
    device=cpu speed="--models lenet5 --batch 4 --repeats 1 --warmup 0 --bf16 --forwards" big="--models lenet5 --batch 8 --repeats 1 --warmup 0"
    graphs=off epoch="--set max_steps=3" tests="tests/test_cuda_setup.py tests/test_precision.py -k refused"
else
    device=cuda graphs=on speed="--models lenet5,vgg16 --batch 128 --repeats 12 --bf16 --graphs --forwards"
    big="--models vgg16 --batch 1024 --repeats 10 --bf16 --graphs --forwards" epoch="" tests="tests/test_device_step.py tests/test_cuda_setup.py tests/test_precision.py tests/test_graphs.py tests/test_forward_choice.py"
fi
: >"$out/summary.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" 2>&1 | tee "$out/device.txt"
nvidia-smi >>"$out/device.txt" 2>&1 || true

# shellcheck disable=SC2086  # the option strings are meant to split
check tests-cuda 240 "$python" -m pytest -q -rs -p no:cacheprovider $tests
# shellcheck disable=SC2086
check step-speed-b128 150 "$python" benchmarks/step_speed.py --device $device $speed
# shellcheck disable=SC2086
check step-speed-vgg16-b1024 90 "$python" benchmarks/step_speed.py --device $device $big
if [ -f .gpu_carry/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    data=$(mktemp -d)/data
    mkdir -p "$data/FashionMNIST/raw"
    for f in .gpu_carry/fashion-mnist/*.gz; do gunzip -c "$f" >"$data/FashionMNIST/raw/$(basename "$f" .gz)"; done
    # The eager step, the captured one (cuda_graphs = "on"), and bf16 with the captured one.
    for variant in "float32 off" "float32 $graphs" "bf16 $graphs"; do
        set -- $variant
        # shellcheck disable=SC2086
        check "epoch-$1-graphs-$2" 90 "$python" -m rlr_engine.cli train fmnist-lenet5-tau0.1-cr80 --device $device \
            --set epochs=1 --set data_dir="$data" --set download=false --set attack_samples=500 \
            --set precision=$1 --set cuda_graphs=$2 $epoch --runs "$out/runs"
    done
else
    echo "== epoch: skipped, no .gpu_carry/fashion-mnist (benchmarks/make_gpu_carry.sh)" | tee -a "$out/summary.txt"
fi
if [ $dry -eq 1 ]; then  # NCCL needs CUDA: the dry run starts the same launcher on gloo
    check torchrun 90 "$python" -m torch.distributed.run --nproc-per-node 1 -m rlr_engine.cli train quickstart \
        --device cpu --set dataset=synthetic --set epochs=1 --set max_steps=3 --runs "$out/runs-torchrun"
else
    check torchrun 120 torchrun --nproc-per-node 1 -m rlr_engine.cli train quickstart --device cuda \
        --set dataset=synthetic --set epochs=2 --runs "$out/runs-torchrun"
fi
if [ $dry -eq 1 ]; then
    echo "== step-speed-reduce-overhead: skipped in the dry run (inductor compiles for minutes on a CPU)" \
        | tee -a "$out/summary.txt"
else
    check step-speed-reduce-overhead 100 "$python" benchmarks/step_speed.py --device cuda --models lenet5 \
        --batch 128 --repeats 15 --graphs --reduce-overhead
fi
cat "$out/summary.txt"
exit $status
