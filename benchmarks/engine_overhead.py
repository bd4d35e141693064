"""Engine overhead: training throughput of the engine (commands checked every step, snapshots at
the dashboard's rate, device-side metrics) against a bare training loop with the same model,
optimizer and batches. Runs alternate; medians and their ratio come from the same run.

    python3 benchmarks/engine_overhead.py [--steps 400] [--repeats 3] [--snapshot-interval 0.25]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import benchmark_config, engine_samples_per_s, report, wait

from rlr_engine.method.condlr import CondLR
from rlr_engine.run.engine import Engine
from rlr_engine.run.trainer import build_network
from rlr_engine.workload.data import load_dataset, to_float


def bare_loop(config, steps: int) -> float:
    """The same training steps with nothing else: samples per second."""
    data = load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_network(config, data)
    optimizer = CondLR(model, lr=config.lr, momentum=config.momentum, tau=config.tau)
    generator = torch.Generator().manual_seed(config.seed)
    n, batch = len(data.train), config.batch_size
    permutation, position = torch.randperm(n, generator=generator), 0
    start, samples = None, 0
    for step in range(steps):
        if step == 20:  # the same warm-up the engine's first windows get
            start, samples = time.perf_counter(), 0
        if position >= n:
            permutation, position = torch.randperm(n, generator=generator), 0
        index = permutation[position : position + batch]
        position += batch
        x, y = to_float(data.train.images[index]), data.train.labels[index]
        samples += len(y)  # the last batch of an epoch is smaller
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    float(loss.detach())
    return samples / (time.perf_counter() - start)


def in_thread(function, *args):
    """Run the baseline in its own thread like the engine: a thread that ran torch ops keeps an
    OpenMP team that slows torch in other threads, so the main thread must run none."""
    result = []
    worker = threading.Thread(target=lambda: result.append(function(*args)))
    worker.start()
    worker.join()
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--snapshot-interval", type=float, default=0.25)
    args = parser.parse_args()
    config = benchmark_config(args.steps, snapshot_interval=args.snapshot_interval)
    print(
        f"LeNet5, synthetic 1×28×28, CondLR τ=0.1, rank kept 20 %, batch {config.batch_size}, "
        f"{args.steps} steps, snapshots every {args.snapshot_interval} s, {torch.get_num_threads()} threads"
    )
    bare, engine_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            bare.append(in_thread(bare_loop, config, args.steps))
            run_dir = Path(tmp) / f"run{repeat}"
            run_dir.mkdir()
            engine = Engine(config, run_dir).start()
            wait(engine)
            assert engine.latest().state == "finished", engine.latest().message
            engine_runs.append(engine_samples_per_s(run_dir))
    report("engine", bare, engine_runs, target=0.98)


if __name__ == "__main__":
    main()
