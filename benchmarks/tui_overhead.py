"""Dashboard overhead: training throughput with rlr-tui attached (Textual's headless driver,
plots redrawing on the Curves tab) against the same engine run headless. Runs alternate;
medians and their ratio come from the same run.

    python3 benchmarks/tui_overhead.py [--steps 400] [--repeats 3] [--size 120x40]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import torch

from _common import benchmark_config, engine_samples_per_s, report, wait
from rlr_engine.engine import Engine
from rlr_tui.app import RlrApp


async def with_dashboard(config, run_dir: Path, size: tuple[int, int]) -> float:
    engines = []

    def factory(cfg, directory, resume):
        engine = Engine(config, run_dir).start()
        engines.append(engine)
        return engine

    app = RlrApp("quickstart", [], run_dir.parent, engine_factory=factory)
    async with app.run_test(size=size) as pilot:
        while not engines or engines[0].latest().active:
            await pilot.pause(0.25)
    engines[0].join(timeout=60)
    assert engines[0].latest().state == "finished", engines[0].latest().message
    return engine_samples_per_s(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="120x40")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    config = benchmark_config(args.steps)
    print(f"LeNet5, synthetic 1×28×28, CondLR τ=0.1, rank kept 20 %, batch {config.batch_size}, "
          f"{args.steps} steps, dashboard {size[0]}×{size[1]}, {torch.get_num_threads()} threads")
    headless, dashboard = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            run_dir = Path(tmp) / f"headless{repeat}"
            run_dir.mkdir()
            engine = Engine(config, run_dir).start()
            wait(engine)
            headless.append(engine_samples_per_s(run_dir))
            run_dir = Path(tmp) / f"dashboard{repeat}"
            run_dir.mkdir()
            dashboard.append(asyncio.run(with_dashboard(config, run_dir, size)))
    report("with dashboard", headless, dashboard, target=0.95)


if __name__ == "__main__":
    main()
