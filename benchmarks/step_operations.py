"""Count the ATen operations of one ``CondLR.step()`` — roughly the kernel launches an accelerator
pays for, and free of timing noise — on the host path (Householder QR, SVD of the cores) and the
device path (CholeskyQR2, Newton polar iterations), at τ = ∞, 0 and 0.1, rank_fraction 0.2. Views
(which launch nothing) are counted apart. Runs on the CPU; the counts are those of any device.

    python3 benchmarks/step_operations.py [--models lenet5,vgg16]
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import torch
import torch.nn.functional as F
from step_speed import PATHS, SHAPES
from torch.utils._python_dispatch import TorchDispatchMode

from rlr_engine import CondLR, to_low_rank
from rlr_engine.workload.models import build_model


class OperationCount(TorchDispatchMode):
    """Counts ATen operations by name while active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func._schema.name.split("::")[-1]] += 1
        return func(*args, **(kwargs or {}))

    def split(self) -> tuple[int, int]:
        """(operations that compute, views)."""
        views = sum(
            n
            for name, n in self.counts.items()
            if name
            in {
                "view",
                "expand",
                "select",
                "slice",
                "_unsafe_view",
                "diagonal",
                "transpose",
                "unsqueeze",
                "t",
                "alias",
                "lift_fresh",
                "detach",
                "as_strided",
            }
        )
        return sum(self.counts.values()) - views, views


def count(model_name: str, tau: float, path: dict) -> tuple[int, int]:
    channels, size = SHAPES[model_name]
    torch.manual_seed(0)
    model = to_low_rank(build_model(model_name, channels, 10, size), rank_fraction=0.2)
    optimizer = CondLR(model, lr=0.01, momentum=0.5, tau=tau, **path)
    x, y = torch.rand(4, channels, size, size), torch.zeros(4, dtype=torch.long)
    for _ in range(2):  # the second step has momentum buffers and a recorded (σ_min/σ_max)²
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        counter = OperationCount()
        with counter:
            optimizer.step()
    return counter.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,vgg16")
    args = parser.parse_args()
    for model_name in args.models.split(","):
        print(f"\n{model_name}: operations (+ views) of one CondLR.step()")
        print(f"  {'τ':>5} {'host path':>16} {'device path':>16} {'device / host':>14}")
        for tau in (math.inf, 0.0, 0.1):
            host, device = count(model_name, tau, PATHS["host"]), count(model_name, tau, PATHS["device"])
            print(
                f"  {tau:>5} {host[0]:>8} (+{host[1]:>4}) {device[0]:>8} (+{device[1]:>4}) {device[0] / host[0]:>14.2f}"
            )


if __name__ == "__main__":
    main()
