"""Time one full training step (forward, backward, optimizer) for dense SGD, vanilla low-rank
(τ = ∞) and CondLR (τ = 0, τ = 0.1) at rank_fraction = 0.2, on LeNet5 / MNIST-shaped and
VGG16 / CIFAR-shaped synthetic batches. Variants are measured round-robin, so machine noise hits
them alike; medians and ratios to dense (and CondLR to τ = ∞) come from the same run.

    python3 benchmarks/step_speed.py [--models lenet5,vgg16] [--batch 128] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from rlr_engine import CondLR, to_low_rank
from rlr_engine.models import build_model

SHAPES = {"lenet5": (1, 28), "vgg16": (3, 32)}
VARIANTS = (("dense SGD", None), ("low-rank τ=inf", math.inf), ("CondLR τ=0", 0.0), ("CondLR τ=0.1", 0.1))


def make(model_name: str, tau: float | None, device: torch.device):
    channels, size = SHAPES[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, channels, 10, size)
    if tau is not None:
        to_low_rank(model, rank_fraction=0.2)
    model.to(device)
    if tau is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.45)
    else:
        optimizer = CondLR(model, lr=0.05, momentum=0.45, tau=tau)
    return model, optimizer


def step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,vgg16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for model_name in args.models.split(","):
        channels, size = SHAPES[model_name]
        x = torch.rand(args.batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        built = {label: make(model_name, tau, device) for label, tau in VARIANTS}
        times: dict[str, list[float]] = {label: [] for label, _ in VARIANTS}
        for _ in range(args.warmup):
            for label, _ in VARIANTS:
                step(*built[label], x, y)
        for _ in range(args.repeats):
            for label, _ in VARIANTS:
                sync(device)
                start = time.perf_counter()
                step(*built[label], x, y)
                sync(device)
                times[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(t) for label, t in times.items()}
        dense = medians["dense SGD"]
        print(f"\n{model_name} ({channels}×{size}×{size}), rank_fraction 0.2, median of {args.repeats}:")
        print(f"  {'variant':<16} {'ms/step':>9} {'× dense':>8}")
        for label, median in medians.items():
            print(f"  {label:<16} {1000 * median:>9.1f} {median / dense:>8.2f}")
        for label in ("CondLR τ=0", "CondLR τ=0.1"):
            print(f"  {label} / low-rank τ=inf: {medians[label] / medians['low-rank τ=inf']:.3f}")


if __name__ == "__main__":
    main()
