"""Each low-rank layer's forward and backward, factored against composed, in the contiguous and
the channels-last layout: what ``low_rank_forward = "auto"`` would choose on this device, timed
``--rounds`` times afresh (``method/forward_choice.py``'s tuner and ``median_seconds``, each
round building the model again), so that a choice that flips between rounds shows as a near-tie.

    python3 benchmarks/forward_layouts.py [--models lenet5,vgg16] [--batch 128] [--rounds 3]
        [--min-run-time 0.5] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from step_speed import SHAPES, make

from rlr_engine.method.forward_choice import ForwardTuner, median_seconds


def timings(model_name: str, batch: int, channels_last: bool, min_run_time: float, device: torch.device):
    """[(layer, factored seconds, composed seconds)] of a freshly built low-rank model (CondLR
    τ = 0.1, as ``step_speed.py`` builds it)."""
    channels, size = SHAPES[model_name]
    model, _ = make(model_name, 0.1, channels_last, {}, False, device)
    x = torch.rand(batch, channels, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tuner = ForwardTuner(lambda work: median_seconds(work, min_run_time))
    return [(c.layer, c.factored, c.composed) for c in tuner.tune(model, x)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds each median runs for")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for model_name in args.models.split(","):
        print(
            f"\n{model_name}, batch {args.batch}, {device}: forward + backward per layer, ms "
            f"(median of {args.rounds} rounds)"
        )
        print(f"{'layout':>14} {'layer':>8} {'factored':>10} {'composed':>10}   faster (rounds)")
        for layout, channels_last in (("contiguous", False), ("channels-last", True)):
            rounds = [
                timings(model_name, args.batch, channels_last, args.min_run_time, device) for _ in range(args.rounds)
            ]
            for i, (layer, _, _) in enumerate(rounds[0]):
                factored = statistics.median(r[i][1] for r in rounds)
                composed = statistics.median(r[i][2] for r in rounds)
                wins = sum(r[i][2] < r[i][1] for r in rounds)
                verdict = (
                    f"composed ({wins}/{args.rounds})"
                    if wins * 2 > args.rounds
                    else f"factored ({args.rounds - wins}/{args.rounds})"
                )
                print(f"{layout:>14} {layer:>8} {1e3 * factored:>10.2f} {1e3 * composed:>10.2f}   {verdict}")


if __name__ == "__main__":
    main()
