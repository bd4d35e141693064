"""Time one full training step (forward, backward, optimizer) for dense SGD, vanilla low-rank
(τ = ∞) and CondLR (τ = 0, τ = 0.1) at rank_fraction = 0.2, each also channels-last (CL), on
LeNet5 / MNIST-shaped and VGG16 / CIFAR-shaped synthetic batches. CondLR runs with the defaults of
the device — on the CPU the host path (Householder QR, SVD of the cores), elsewhere the device
path (CholeskyQR2, Newton polar iterations for the cores: no host synchronisation) — and at
τ = 0.1 also with the other path, to compare the two on the same device. Variants are measured
round-robin, so machine noise hits them alike; medians and ratios to the best dense variant (and
CondLR to τ = ∞) come from the same run.

    python3 benchmarks/step_speed.py [--models lenet5,vgg16] [--batch 128] [--repeats 7] [--device cuda] [--compile]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from rlr_engine import CondLR, to_low_rank
from rlr_engine.workload.models import build_model, use_channels_last

SHAPES = {"lenet5": (1, 28), "vgg16": (3, 32)}
PATHS = {
    "host": {"retraction": "householder", "core_projection": "svd"},
    "device": {"retraction": "cholesky-qr2", "core_projection": "newton"},
}


def variants(device: torch.device, compiled: bool) -> tuple:
    """(label, τ (None: dense), channels_last, CondLR keyword arguments, torch.compile) and the
    ratios to print."""
    other = "device" if device.type == "cpu" else "host"
    found = [
        ("dense SGD", None, False, {}, False),
        ("low-rank τ=inf", math.inf, False, {}, False),
        ("CondLR τ=0", 0.0, False, {}, False),
        ("CondLR τ=0.1", 0.1, False, {}, False),
        (f"CondLR τ=0.1, {other}", 0.1, False, PATHS[other], False),
        ("dense SGD, CL", None, True, {}, False),
        ("low-rank τ=inf, CL", math.inf, True, {}, False),
        ("CondLR τ=0, CL", 0.0, True, {}, False),
        ("CondLR τ=0.1, CL", 0.1, True, {}, False),
        (f"CondLR τ=0.1, CL, {other}", 0.1, True, PATHS[other], False),
    ]
    ratios = [
        ("CondLR τ=0", "low-rank τ=inf"),
        ("CondLR τ=0.1", "low-rank τ=inf"),
        ("CondLR τ=0, CL", "low-rank τ=inf, CL"),
        ("CondLR τ=0.1, CL", "low-rank τ=inf, CL"),
        ("CondLR τ=0.1", f"CondLR τ=0.1, {other}"),
        ("CondLR τ=0.1, CL", f"CondLR τ=0.1, CL, {other}"),
    ]
    if compiled:
        found += [("CondLR τ=0.1, compiled", 0.1, False, {}, True), ("CondLR τ=0.1, CL, compiled", 0.1, True, {}, True)]
        ratios += [("CondLR τ=0.1, compiled", "CondLR τ=0.1"), ("CondLR τ=0.1, CL, compiled", "CondLR τ=0.1, CL")]
    return found, ratios


def make(model_name: str, tau: float | None, channels_last: bool, path: dict, compiled: bool, device: torch.device):
    """(model, optimizer); with ``compiled`` the model is torch.compile'd (inductor; the
    optimizer step stays eager)."""
    channels, size = SHAPES[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, channels, 10, size)
    if tau is not None:
        to_low_rank(model, rank_fraction=0.2)
    model.to(device)
    if channels_last:
        use_channels_last(model)
    if tau is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.45)
    else:
        optimizer = CondLR(model, lr=0.05, momentum=0.45, tau=tau, **path)
    return (torch.compile(model) if compiled else model), optimizer


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
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also CondLR τ=0.1 with the model torch.compile'd (its compilation runs in the warm-up)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    found, ratios = variants(device, args.compile)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for model_name in args.models.split(","):
        channels, size = SHAPES[model_name]
        x = torch.rand(args.batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        built = {label: make(model_name, tau, cl, path, compiled, device) for label, tau, cl, path, compiled in found}
        times: dict[str, list[float]] = {label: [] for label, *_ in found}
        for _ in range(args.warmup):
            for label in built:
                step(*built[label], x, y)
        for _ in range(args.repeats):
            for label in built:
                sync(device)
                start = time.perf_counter()
                step(*built[label], x, y)
                sync(device)
                times[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(t) for label, t in times.items()}
        dense = medians["dense SGD"]
        best_dense = min(dense, medians["dense SGD, CL"])
        print(
            f"\n{model_name} ({channels}×{size}×{size}), rank_fraction 0.2, median of {args.repeats} "
            f"(CL: channels_last = true):"
        )
        print(f"  {'variant':<28} {'ms/step':>9} {'× dense':>8} {'× best dense':>13}")
        for label, median in medians.items():
            print(f"  {label:<28} {1000 * median:>9.1f} {median / dense:>8.2f} {median / best_dense:>13.2f}")
        for label, base in ratios:
            print(f"  {label} / {base}: {medians[label] / medians[base]:.3f}")


if __name__ == "__main__":
    main()
