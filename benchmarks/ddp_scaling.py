"""Data-parallel scaling: training throughput with N = 1 and N = 2 processes (torch.distributed,
DistributedDataParallel; NCCL with one GPU per process when there are GPUs, gloo on CPU), at the
same global batch, so each of the N processes computes 1/N of every batch (strong scaling).

Each rank runs the Trainer's real step (sharded batch, DDP gradient average, CondLR's QR/SVD on
every rank); the time of a repeat is the slowest rank's. Repeats alternate N = 1 and N = 2;
medians and the scaling efficiency S_N / (N · S_1) come from the same run.

    python3 benchmarks/ddp_scaling.py [--steps 60] [--repeats 3] [--batch 256] [--threads 1]

On CPU, give each process its own cores (``--threads``) or the comparison measures a shared
core, not the method.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import benchmark_config


def timed_steps(steps: int, batch: int, threads: int, warmup: int = 5) -> float:
    """Inside every rank: seconds for ``steps`` training steps after ``warmup`` (max over ranks)."""
    import os

    import torch.distributed as dist

    from rlr_engine.run.distributed import SINGLE, join_process_group, leave_process_group, ranks_from_environment
    from rlr_engine.run.trainer import Trainer, load_run_data

    torch.set_num_threads(threads)
    ranks = ranks_from_environment() if "RANK" in os.environ else SINGLE
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = ranks.place(device)
    if ranks.distributed:
        join_process_group(ranks, device)
    try:
        config = benchmark_config(steps + warmup, batch_size=batch, device=device.type)
        trainer = Trainer(config, load_run_data(config, device), device, ranks)

        def run(n: int) -> None:
            for _ in range(n):
                trainer.train_step()
                if trainer.epoch_complete:
                    trainer.end_epoch()
            trainer.read_window()  # one host sync (and, with N > 1, one all-reduce)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        run(warmup)
        started = time.perf_counter()
        run(steps)
        seconds = torch.tensor([time.perf_counter() - started], dtype=torch.float64, device=device)
        if ranks.distributed:
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        return float(seconds)
    finally:
        leave_process_group()


def launch(nproc: int, steps: int, batch: int, threads: int) -> float:
    """Samples per second with ``nproc`` processes started by torch elastic's launcher API."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        run_id=str(uuid.uuid4()),
        max_restarts=0,
        start_method="spawn",
        monitor_interval=0.1,
    )
    seconds = elastic_launch(config, timed_steps)(steps, batch, threads)[0]
    return steps * batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="global batch size")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    args = parser.parse_args()
    where = (
        f"{torch.cuda.device_count()} GPU(s), NCCL"
        if torch.cuda.is_available()
        else f"CPU, gloo, {args.threads} thread(s) per process"
    )
    print(f"LeNet5 CondLR τ=0.1 (20 % rank) on synthetic 28×28, global batch {args.batch}, {args.steps} steps; {where}")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for nproc in rates:
            rates[nproc].append(launch(nproc, args.steps, args.batch, args.threads))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    for nproc, values in rates.items():
        print(
            f"N = {nproc}: {', '.join(f'{v:,.0f}' for v in values)} samples/s (median {statistics.median(values):,.0f})"
        )
    print(f"speed-up N=2 / N=1 = {two / one:.2f}; scaling efficiency = {two / (2 * one):.0%}")


if __name__ == "__main__":
    main()
