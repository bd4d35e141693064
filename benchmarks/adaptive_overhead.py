"""What rank adaptation costs: time inside augment + truncate as a fraction of the training time
of the same run (target ≤ 10 %), for LeNet5 / MNIST-shaped and VGG16 / CIFAR-shaped synthetic
batches, robust-dlrt and condlr-adaptive, ranks starting at 20 % of full with storage at 50 %.

Each window of k batches is timed as a whole (forward, backward, regularizer, step) and its
augment and truncate calls separately; the ratio of the sums and the median per-window ratio
are printed. The augment batch also spends a forward/backward that no optimizer step follows;
that share (1/k of the batches) is printed beside it, not counted in the ratio.

    PYTHONPATH=$PWD python3 benchmarks/adaptive_overhead.py [--models lenet5,vgg16] [--windows 3]
        [--batch 128] [--adapt-every 10] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rlr_engine.method.adaptive import METHODS, RankAdaptation, core_optimizer
from rlr_engine.method.lowrank import to_low_rank
from rlr_engine.workload.models import build_model

SHAPES = {"lenet5": (1, 28), "vgg16": (3, 32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_name: str, method: str, args, device: torch.device) -> None:
    channels, size = SHAPES[model_name]
    torch.manual_seed(0)
    model = to_low_rank(build_model(model_name, channels, 10, size), 0.2, max_rank_fraction=0.5).to(device)
    optimizer = core_optimizer(model, "sgd", lr=0.01, momentum=0.45)
    adaptation = RankAdaptation(
        model, optimizer, method, adapt_every=args.adapt_every, theta=0.1, beta=0.05, tau=0.1, min_rank=2
    )
    spent = {"augment": 0.0, "truncate": 0.0}

    def timed(name, method_):
        def run():
            sync(device)
            start = time.perf_counter()
            result = method_()
            sync(device)
            spent[name] += time.perf_counter() - start
            return result

        return run

    adaptation._augment = timed("augment", adaptation._augment)
    adaptation._truncate = timed("truncate", adaptation._truncate)
    x = torch.rand(args.batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def batch():
        loss = F.cross_entropy(model(x), y) + adaptation.regularizer()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        adaptation.step()

    for _ in range(args.adapt_every):  # warm-up window
        batch()
    windows, adapt_parts = [], []
    for _ in range(args.windows):
        before = dict(spent)
        sync(device)
        start = time.perf_counter()
        for _ in range(args.adapt_every):
            batch()
        sync(device)
        windows.append(time.perf_counter() - start)
        adapt_parts.append(sum(spent.values()) - sum(before.values()))
    ratios = [a / w for a, w in zip(adapt_parts, windows)]
    total = sum(adapt_parts) / sum(windows)
    print(
        f"  {model_name:<7} {method:<16} window {1000 * statistics.median(windows):8.1f} ms  "
        f"augment+truncate {1000 * statistics.median(adapt_parts):7.1f} ms  ratio median "
        f"{statistics.median(ratios):.3f}, overall {total:.3f} "
        f"(target ≤ 0.10: {'met' if total <= 0.10 else 'NOT met'}); augment batch without a step: "
        f"{1 / args.adapt_every:.2f} of the batches; ranks {list(adaptation.ranks().values())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,vgg16")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--windows", type=int, default=3, help="timed windows per variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--adapt-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"k {args.adapt_every}, {args.windows} timed windows after one warm-up window"
    )
    for model_name in args.models.split(","):
        for method in args.methods.split(","):
            measure(model_name, method, args, device)


if __name__ == "__main__":
    main()
