"""Training throughput of an engine serving its control socket with 0, 1 and 3 attached clients,
against the same engine with no server, interleaved in one run (median of --repeats each).

Each client is its own process (as a dashboard is): it connects, shakes hands and reads every
snapshot, event and acknowledgement the engine sends, polling like the dashboard does.

    PYTHONPATH=. python3 benchmarks/engine_server.py --steps 400 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import benchmark_config, engine_samples_per_s, wait

from rlr_engine.control.run_files import CONTROL_SOCKET
from rlr_engine.run.engine import Engine
from rlr_engine.run.server import ControlServer

CLIENT = """
import sys, time
from rlr_engine.control.client import EngineClient
client = EngineClient.connect(sys.argv[1], client="bench")
print("attached", flush=True)
while client.connected:
    client.latest(); client.take_acks()
    time.sleep(0.25)
"""


def one_run(config, run_dir: Path, clients: int | None) -> float:
    """clients=None: no server at all (the headless baseline)."""
    run_dir.mkdir()
    engine = Engine(config, run_dir).setup()
    server, procs = None, []
    if clients is not None:
        server = ControlServer(engine, run_dir / CONTROL_SOCKET).start()
        engine.listener = server
        for _ in range(clients):
            proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(run_dir)], stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "attached"
            procs.append(proc)
    engine.start()
    wait(engine)
    assert engine.latest().state == "finished", engine.latest().message
    if server is not None:
        server.close()
    for proc in procs:
        proc.wait(30)
    return engine_samples_per_s(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = benchmark_config(args.steps, snapshot_interval=0.25)
    print(
        f"LeNet5, synthetic 1×28×28, CondLR τ=0.1, rank kept 20 %, batch {config.batch_size}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats, conditions interleaved"
    )
    conditions = {"no server": None, "server, 0 clients": 0, "server, 1 client": 1, "server, 3 clients": 3}
    results: dict[str, list[float]] = {name: [] for name in conditions}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, clients in conditions.items():
                run_dir = Path(tmp) / f"{repeat}-{clients}"
                results[name].append(one_run(config, run_dir, clients))
                print(f"  repeat {repeat + 1} {name}: {results[name][-1]:,.0f} samples/s", flush=True)
    baseline = statistics.median(results["no server"])
    for name, values in results.items():
        median = statistics.median(values)
        verdict = (
            ""
            if name == "no server"
            else (
                f"  ratio {median / baseline:.3f} (target ≥ 0.98: {'met' if median / baseline >= 0.98 else 'NOT met'})"
            )
        )
        print(f"{name:>18}: {', '.join(f'{v:,.0f}' for v in values)} samples/s, median {median:,.0f}{verdict}")


if __name__ == "__main__":
    main()
