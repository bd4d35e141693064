"""TensorBoard overhead: training throughput of a run writing TensorBoard event files (scalars at
every snapshot window, σ histograms at the spectra cadence, events as text) against the same run
without. Runs alternate (the order flips every repeat); medians and their ratio come from the same
run. Also prints the time the TensorBoard writer thread spent writing, as a share of the training
time: under the GIL, an upper bound of what writing can take from training.

    python3 benchmarks/tensorboard_overhead.py [--steps 400] [--repeats 5] [--snapshot-interval 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import benchmark_config, engine_samples_per_s, report, wait

from rlr_engine.run.engine import Engine
from rlr_engine.run.tensorboard_log import TensorBoardLog


class WriterClock:
    """Seconds TensorBoardLog's writer thread spends writing (building summaries, SummaryWriter calls)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        TensorBoardLog._write = self._timed(TensorBoardLog._write)

    def _timed(self, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def one_run(config, run_dir: Path, clock: WriterClock) -> tuple[float, float]:
    """(samples/s, share of the training time spent in the writer)."""
    run_dir.mkdir()
    clock.seconds = 0.0
    engine = Engine(config, run_dir).start()
    wait(engine)
    assert engine.latest().state == "finished", engine.latest().message
    train_seconds = engine.recorder.train_seconds()
    return engine_samples_per_s(run_dir), clock.seconds / train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--snapshot-interval", type=float, default=0.25)
    args = parser.parse_args()
    config = benchmark_config(args.steps, snapshot_interval=args.snapshot_interval)
    print(
        f"LeNet5, synthetic 1×28×28, CondLR τ=0.1, rank kept 20 %, batch {config.batch_size}, "
        f"{args.steps} steps, snapshots every {args.snapshot_interval} s, {torch.get_num_threads()} threads"
    )
    clock = WriterClock()
    off, on, shares = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for tensorboard in (False, True) if repeat % 2 == 0 else (True, False):
                rate, share = one_run(
                    config.replace(tensorboard=tensorboard),
                    Path(tmp) / f"{'on' if tensorboard else 'off'}{repeat}",
                    clock,
                )
                (on if tensorboard else off).append(rate)
                if tensorboard:
                    shares.append(share)
    print(
        f"TensorBoard writer thread busy: median {statistics.median(shares):.3%} of the "
        f"training time ({', '.join(f'{s:.3%}' for s in shares)})"
    )
    report("tensorboard on", off, on, target=0.99)


if __name__ == "__main__":
    main()
