"""One Fashion-MNIST epoch of LeNet5 CondLR τ = 0.1 (the preset's lr, momentum, batch and rank)
on the host path, on the device path, and on the host path with only its retraction swapped (a
change of rounding alone); same seed, same batches. Shows how far the device path's run lands
from the host path's, against how far rounding alone takes it. Needs Debian's
dataset-fashion-mnist (or the data set under DATA_DIR).

    python3 benchmarks/paths_fashion_mnist.py [DATA_DIR]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from step_speed import PATHS

from rlr_engine import CondLR, low_rank_layers, to_low_rank
from rlr_engine.workload.data import ImageData, load_dataset, to_float
from rlr_engine.workload.models import build_model, use_channels_last

RUNS = {
    "host": PATHS["host"],
    "device": PATHS["device"],
    "rounding only": {"retraction": "cholesky-qr2", "core_projection": "svd"},
}
REPORTED_STEPS = (0, 9, 29, 99, 199, 349)


def one_epoch(data: ImageData, path: dict) -> tuple[list[float], float, list[float]]:
    """(loss per step, test accuracy, κ(S) per layer) after one epoch on ``path``."""
    torch.manual_seed(0)
    model = to_low_rank(build_model("lenet5", 1, 10, 28), rank_fraction=0.2)
    use_channels_last(model)
    optimizer = CondLR(model, lr=0.1, momentum=0.3, tau=0.1, **path)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    losses = []
    for start in range(0, len(order) - 127, 128):
        batch = order[start : start + 128]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(to_float(data.train.images[batch])), data.train.labels[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(to_float(data.test.images)).argmax(1) == data.test.labels).float().mean().item()
    kappas = []
    for _, layer in low_rank_layers(model):
        sigma = torch.linalg.svdvals(layer.S.detach())
        kappas.append((sigma[0] / sigma[-1]).item())
    return losses, accuracy, kappas


def main() -> None:
    data = load_dataset("fashion-mnist", sys.argv[1] if len(sys.argv) > 1 else "data")
    results = {}
    for name, path in RUNS.items():
        start = time.perf_counter()
        losses, accuracy, kappas = results[name] = one_epoch(data, path)
        print(
            f"{name:<14} {time.perf_counter() - start:4.0f} s  mean loss of the first / last 50 steps "
            f"{sum(losses[:50]) / 50:.4f} / {sum(losses[-50:]) / 50:.4f}  test accuracy {accuracy:.4f}  "
            f"κ(S) {', '.join(f'{k:.5f}' for k in kappas)}"
        )
    for name in ("device", "rounding only"):
        gaps = [abs(a - b) for a, b in zip(results["host"][0], results[name][0])]
        print(
            f"|loss − host path's loss|, {name}, at steps {', '.join(str(i + 1) for i in REPORTED_STEPS)}: "
            + ", ".join(f"{gaps[i]:.1e}" for i in REPORTED_STEPS if i < len(gaps))
        )


if __name__ == "__main__":
    main()
