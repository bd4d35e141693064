"""Count the ATen operations of one training step — forward + backward, and ``CondLR.step()`` —
roughly the kernel launches an accelerator pays for, and free of timing noise, on the host path
(Householder QR, SVD of the cores) and the device path (CholeskyQR, Newton polar iterations), at
τ = ∞, 0 and 0.1, rank_fraction 0.2, batch 2, the second step (momentum buffers and a recorded
(σ_min/σ_max)² exist). Operations that launch nothing — views, and the profiler's marks around
``Optimizer.step`` — are counted apart. The last column is the device path ``capturable`` (its
hyperparameters read from device tensors), as a captured step runs it. Runs on the CPU; the counts
are those of any device.

A ``_foreach_*`` operation counts as one only where CUDA runs it as one kernel: every tensor
non-overlapping and dense, on one device, one dtype per list (``_check_tensors_share_device_and_dtype``
in ATen's ``ForeachUtils.h``); otherwise CUDA falls back to one kernel per tensor, and so does the
count. A ``cat`` counts one launch per 128 inputs (``CAT_ARRAY_BATCH_SIZE``).

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


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t`` is non-overlapping and dense: its strides, sorted, are those of a contiguous
    tensor in some order of its dimensions."""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def launches(name: str, args: tuple) -> int:
    """How many kernels CUDA launches for the ATen operation ``name`` with ``args`` (module
    docstring); 1 for everything but slow-path foreach operations and long concatenations."""
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
    if name.startswith("_foreach_") and lists:
        tensors = [t for lst in lists for t in lst]
        fast = all(_dense(t) and t.device == tensors[0].device for t in tensors) and all(
            len({t.dtype for t in lst}) == 1 for lst in lists
        )
        if name != "_foreach_copy_":  # a copy may convert; every other operation needs one dtype
            fast = fast and len({t.dtype for t in tensors}) == 1
        return 1 if fast else len(lists[0])
    if name == "cat" and lists:
        return math.ceil(len(lists[0]) / 128)
    return 1


class OperationCount(TorchDispatchMode):
    """Counts ATen operations (kernel launches, see ``launches``) by name while active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        self.counts[name] += launches(name, args)
        return func(*args, **(kwargs or {}))

    def split(self) -> tuple[int, int]:
        """(operations that launch a kernel, operations that launch none)."""
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
                "permute",
                "split_with_sizes",
                "unbind",
                "_record_function_enter_new",
                "_record_function_exit",
            }
        )
        return sum(self.counts.values()) - views, views


def count(model_name: str, tau: float, path: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """((operations, views) of forward + backward, (operations, views) of the optimizer step);
    ``path`` holds CondLR's keyword arguments."""
    channels, size = SHAPES[model_name]
    torch.manual_seed(0)
    model = to_low_rank(build_model(model_name, channels, 10, size), rank_fraction=0.2)
    optimizer = CondLR(model, lr=0.01, momentum=0.5, tau=tau, **path)
    x, y = torch.rand(2, channels, size, size), torch.zeros(2, dtype=torch.long)
    for _ in range(2):  # the second step has momentum buffers and a recorded (σ_min/σ_max)²
        optimizer.zero_grad()
        passes = OperationCount()
        with passes:
            F.cross_entropy(model(x), y).backward()
        counter = OperationCount()
        with counter:
            optimizer.step()
    return passes.split(), counter.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,vgg16")
    args = parser.parse_args()
    for model_name in args.models.split(","):
        print(
            f"\n{model_name}: operations (+ views and marks, which launch nothing);"
            " step = CondLR.step(), total = forward + backward + step"
        )
        print(
            f"  {'τ':>5} {'host step':>16} {'device step':>16} {'fwd+bwd':>14} {'device total':>13}"
            f" {'capturable total':>17}"
        )
        for tau in (math.inf, 0.0, 0.1):
            (_, host), (passes, device) = count(model_name, tau, PATHS["host"]), count(model_name, tau, PATHS["device"])
            _, capturable = count(model_name, tau, {**PATHS["device"], "capturable": True})
            print(
                f"  {tau:>5} {host[0]:>8} (+{host[1]:>4}) {device[0]:>8} (+{device[1]:>4})"
                f" {passes[0]:>6} (+{passes[1]:>4}) {passes[0] + device[0]:>13} {passes[0] + capturable[0]:>17}"
            )


if __name__ == "__main__":
    main()
