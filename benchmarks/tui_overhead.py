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

from rlr_engine.control.run_files import CONTROL_SOCKET
from rlr_engine.run.engine import Engine
from rlr_engine.run.server import ControlServer
from rlr_tui.app import RlrApp
from rlr_tui.engines import EngineLauncher


class InProcessLauncher(EngineLauncher):
    """The engine and its control server in this process (the dashboard attaches through the
    socket as usual): the dashboard's cost lands on the training process, a pessimistic measure."""

    def __init__(self, config, run_dir: Path) -> None:
        self.config, self.run_dir, self.engine, self.server = config, run_dir, None, None

    def start(self, preset, overrides, runs_root) -> Path:
        self.engine = Engine(self.config, self.run_dir).setup()
        self.server = ControlServer(self.engine, self.run_dir / CONTROL_SOCKET).start()
        self.engine.listener = self.server
        self.engine.start()
        return self.run_dir


async def with_dashboard(config, run_dir: Path, size: tuple[int, int]) -> float:
    launcher = InProcessLauncher(config, run_dir)
    app = RlrApp("quickstart", [], run_dir.parent, launcher=launcher)
    async with app.run_test(size=size) as pilot:
        while launcher.engine is None or launcher.engine.latest().active:
            await pilot.pause(0.25)
    launcher.engine.join(timeout=60)
    launcher.server.close()
    assert launcher.engine.latest().state == "finished", launcher.engine.latest().message
    return engine_samples_per_s(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="120x40")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    config = benchmark_config(args.steps)
    print(
        f"LeNet5, synthetic 1×28×28, CondLR τ=0.1, rank kept 20 %, batch {config.batch_size}, "
        f"{args.steps} steps, dashboard {size[0]}×{size[1]}, {torch.get_num_threads()} threads"
    )
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
