import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch

# One thread: the suite is small-batch work, and deterministic timing matters more than speed.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_cleanup():
    torch.manual_seed(0)
    yield
    from helpers import stop_started_engines

    stop_started_engines()


@pytest.fixture
def engine_processes():
    """Run directories of engine processes a test started: each is stopped (SIGTERM, then
    SIGKILL) when the test ends, so none outlives it."""
    import json
    import os
    import signal
    import time

    from rlr_engine.control.run_dirs import engine_alive

    run_dirs: list = []
    yield run_dirs
    for run_dir in run_dirs:
        try:
            pid = json.loads((Path(run_dir) / "engine.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
            if not engine_alive(run_dir):
                break
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while engine_alive(run_dir) and time.monotonic() < deadline:
                time.sleep(0.05)
