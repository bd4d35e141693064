"""Train LeNet5 on Fashion-MNIST with a rank-adaptive method (robust-dlrt or condlr-adaptive)
outside the engine, and measure what augmentation and truncation cost.

Prints the loss, the ranks and the largest κ(S) at window boundaries as it goes, then test
accuracy, FGSM accuracy, the mean relative jump ‖ΔW‖/‖W‖ a boundary makes (truncation plus,
for condlr-adaptive, the τ projection), and the time spent inside augment + truncate as a
fraction of the training time of the same run (target ≤ 10 %).

    PYTHONPATH=$PWD python3 benchmarks/adaptive_train.py --method condlr-adaptive --epochs 1
    (--criterion frobenius|relative  --beta 0.05  --tau 0.1  --theta 0.1  --adapt-every 10
     --core-optimizer sgd|adamw  --lr 0.1  --max-steps N  --device cpu|cuda  --threads 1)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from rlr_engine.core.config import AttackSpec
from rlr_engine.method.adaptive import CORE_OPTIMIZERS, CRITERIA, METHODS, RankAdaptation, core_optimizer
from rlr_engine.method.lowrank import low_rank_layers, parameter_report, to_low_rank
from rlr_engine.workload.attacks import adversarial_accuracy
from rlr_engine.workload.data import load_dataset, to_float
from rlr_engine.workload.models import build_model


def max_kappa(model) -> float:
    kappas = []
    for _, layer in low_rank_layers(model):
        s = torch.linalg.svdvals(layer.live_factors()[1].detach())
        kappas.append((s[0] / s[-1]).item())
    return max(kappas)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """Wraps a bound method and adds its wall time (synchronised) to ``seconds``."""

    def __init__(self, method, device):
        self.method, self.device, self.seconds, self.calls = method, device, 0.0, 0

    def __call__(self, *args, **kwargs):
        sync(self.device)
        start = time.perf_counter()
        result = self.method(*args, **kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return result


def train(args) -> None:
    device = torch.device(args.device)
    data = load_dataset(
        "fashion-mnist", args.data_dir, download=False, val_fraction=0.25, seed=args.seed, device=device
    )
    torch.manual_seed(args.seed)
    model = build_model("lenet5", data.channels, data.num_classes, data.image_size, data.mean, data.std)
    to_low_rank(model, args.rank_fraction, skip_last=True, max_rank_fraction=args.max_rank_fraction)
    model.to(device)
    optimizer = core_optimizer(model, args.core_optimizer, args.lr, args.momentum)
    adaptation = RankAdaptation(
        model,
        optimizer,
        args.method,
        adapt_every=args.adapt_every,
        theta=args.theta,
        beta=args.beta,
        tau=args.tau,
        min_rank=args.min_rank,
        criterion=args.criterion,
    )
    augment = adaptation._augment = Timed(adaptation._augment, device)
    truncate = adaptation._truncate = Timed(adaptation._truncate, device)
    jumps: list[float] = []
    if args.measure_jumps:  # outside the timing: copies of W are not part of the method
        timed_truncate = adaptation._truncate

        def truncate_measuring_jumps():
            before = {n: l.dense_weight_matrix().detach().clone() for n, l in adaptation.layers}
            changes = timed_truncate()
            jumps.append(
                statistics.mean(
                    (
                        torch.linalg.matrix_norm(l.dense_weight_matrix() - before[n])
                        / torch.linalg.matrix_norm(before[n])
                    ).item()
                    for n, l in adaptation.layers
                )
            )
            return changes

        adaptation._truncate = truncate_measuring_jumps
    print(
        f"{args.method} ({adaptation.criterion}, β {args.beta:g}, τ {adaptation.tau:g}, θ {args.theta:g}, "
        f"k {args.adapt_every}, {args.core_optimizer}) start ranks {adaptation.ranks()}, "
        f"κ_max {max_kappa(model):.3f}"
    )
    generator = torch.Generator(device=device).manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(data.train) / args.batch)
    total = args.epochs * steps_per_epoch if not args.max_steps else args.max_steps
    losses, kappas, boundary_ranks = [], [], list(adaptation.ranks().values())
    step, started = 0, time.perf_counter()
    while step < total:
        permutation = torch.randperm(len(data.train), device=device, generator=generator)
        for start in range(0, len(data.train), args.batch):
            if step >= total:
                break
            index = permutation[start : start + args.batch]
            x, y = to_float(data.train.images[index]), data.train.labels[index]
            task = F.cross_entropy(model(x), y)
            loss = task + adaptation.regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            changes = adaptation.step()
            step += 1
            losses.append(task.item())
            if changes:
                kappas.append(max_kappa(model))
                boundary_ranks = [c.new_rank for c in changes]
            if step % args.print_every == 0:
                print(
                    f"step {step:5d}  loss {statistics.mean(losses[-args.print_every :]):.4f}  "
                    f"ranks at last boundary {boundary_ranks}  κ_max there "
                    f"{kappas[-1] if kappas else float('nan'):.3f}"
                )
    sync(device)
    seconds = time.perf_counter() - started
    if adaptation.position:  # measure a model at a window boundary, as for any evaluation
        adaptation.end_window()
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(to_float(data.test.images[i : i + 1000])).argmax(1) == data.test.labels[i : i + 1000]).sum().item()
            for i in range(0, len(data.test), 1000)
        )
    subset = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(1))[: args.attack_samples]
    spec = AttackSpec("fgsm", (0.0, 0.02, 0.05))
    adversarial = adversarial_accuracy(
        model, data.test.images[subset.to(device)], data.test.labels[subset.to(device)], spec, to_input=to_float
    )
    report = parameter_report(model)
    print(
        f"\nfinal ranks {adaptation.ranks()}  compression {report.compression:.1%}  "
        f"κ_max {max_kappa(model):.4f} (bound {1 + adaptation.tau:g})"
    )
    print(
        f"test acc {correct / len(data.test):.2%}  FGSM ({args.attack_samples} images) "
        + ", ".join(f"ε={e:g}: {a:.1%}" for e, a in adversarial.items())
    )
    print(f"loss first 50 steps {statistics.mean(losses[:50]):.4f} → last 50 {statistics.mean(losses[-50:]):.4f}")
    print(f"max κ over {len(kappas)} boundaries: {max(kappas) if kappas else float('nan'):.4f}")
    if jumps:
        print(
            f"mean relative jump ‖ΔW‖/‖W‖ of truncate (+ projection), over layers and windows: "
            f"{statistics.mean(jumps):.4f}"
        )
    spent = augment.seconds + truncate.seconds
    print(
        f"augment {augment.calls}× {augment.seconds:.2f} s, truncate {truncate.calls}× {truncate.seconds:.2f} s, "
        f"training {seconds:.1f} s ({step} steps)"
    )
    print(
        f"ratio (augment + truncate) / training time = {spent / seconds:.3f} (target ≤ 0.10: "
        f"{'met' if spent / seconds <= 0.10 else 'NOT met'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="condlr-adaptive")
    parser.add_argument("--criterion", choices=CRITERIA, default=None)
    parser.add_argument("--core-optimizer", choices=CORE_OPTIMIZERS, default="sgd")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.3)
    parser.add_argument("--adapt-every", type=int, default=10)
    parser.add_argument("--theta", type=float, default=0.1)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--min-rank", type=int, default=2)
    parser.add_argument("--rank-fraction", type=float, default=0.2)
    parser.add_argument("--max-rank-fraction", type=float, default=0.5)
    parser.add_argument("--attack-samples", type=int, default=1000)
    parser.add_argument("--print-every", type=int, default=50)
    parser.add_argument("--measure-jumps", action="store_true", help="copy W around boundaries (slower)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="/tmp/rlr-data")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train(args)


if __name__ == "__main__":
    main()
