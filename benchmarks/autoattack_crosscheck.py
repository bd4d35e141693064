"""Cross-check rlr's AutoAttack (pyautoattack, the authors' code) against torchattacks 3.5.1's
re-implementation on one small trained model: same images, same ε, standard versions of both.

    PYTHONPATH=$PWD python3 benchmarks/autoattack_crosscheck.py [--images 300] [--eps 0.1]

torchattacks is not a dependency of rlr; install it aside to run this, e.g.
``pip install --no-deps --target /tmp/ta-site torchattacks==3.5.1 tqdm`` and add
``--torchattacks-path /tmp/ta-site``. Prints robust accuracy of each, the images on which they
disagree, and CPU seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def train_digits_model():
    """The suite's digits CNN, trained as the tests train it (tests/helpers.py)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import train_digits_cnn

    from rlr_engine.workload.models import digits_cnn

    model, images, labels = train_digits_cnn(digits_cnn())
    return model.eval(), images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--torchattacks-path", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.torchattacks_path:
        sys.path.insert(0, args.torchattacks_path)
    import torchattacks

    from rlr_engine.core.config import AttackSpec
    from rlr_engine.workload.attacks import robustness

    model, x, y = train_digits_model()
    x, y = x[: args.images], y[: args.images]
    clean = (model(x).argmax(1) == y).float().mean().item()

    start = time.process_time()
    ours = robustness(model, x, y, AttackSpec("autoattack", (args.eps,)))
    ours_s = time.process_time() - start

    start = time.process_time()
    theirs_attack = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard", n_classes=10, seed=0)
    x_adv = theirs_attack(x, y)
    theirs = (model(x_adv).argmax(1) == y).float().mean().item()
    theirs_s = time.process_time() - start

    print(f"model: digits CNN, {args.images} test images, clean accuracy {clean:.1%}, ε = {args.eps:g} (L∞)")
    print(f"pyautoattack (rlr)      robust accuracy {ours.accuracy[0]:.1%}  ({ours_s:.1f} CPU s)")
    for part in ours.parts:
        print(f"    after {part.attack:8} {part.accuracy[0]:.1%}")
    print(f"torchattacks AutoAttack robust accuracy {theirs:.1%}  ({theirs_s:.1f} CPU s)")
    print(f"difference (torchattacks − pyautoattack): {100 * (theirs - ours.accuracy[0]):+.1f} points")


if __name__ == "__main__":
    main()
