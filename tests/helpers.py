"""Shared test helpers: small configs and waiting on an engine."""

from __future__ import annotations

import sys
import time

import torch

from rlr_engine.control.client import EngineClient, EngineUnavailable
from rlr_engine.control.run_dirs import new_run_dir
from rlr_engine.core.config import RunConfig
from rlr_engine.run.engine import Engine


def small_config(**changes) -> RunConfig:
    base = dict(
        name="test",
        dataset="synthetic",
        model="digits-cnn",
        method="lowrank",
        tau=0.1,
        rank_fraction=0.5,
        epochs=3,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        eval_every=1,
        attack_every=0,
        attack_samples=100,
        checkpoint_every=1,
        snapshot_interval=0.05,
        eps=(0.0, 0.05, 0.1),
        seed=0,
        device="cpu",  # also on a machine with a GPU: the tests that are about CUDA say so
    )
    base.update(changes)
    return RunConfig(**base)


def synthetic_task(n=256, d=20, classes=4, seed=0):
    """Gaussian clusters around random centres: a small classification task for optimizer tests."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + 0.7 * torch.randn(n, d, generator=g)
    return x, y


def train_digits_cnn(model, epochs=15):
    """Plain SGD on scikit-learn's digits; returns the model and the test images and labels."""
    import torch.nn.functional as F

    from rlr_engine.workload.data import load_dataset, to_float

    torch.manual_seed(0)
    data = load_dataset("digits")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = to_float(data.train.images), data.train.labels
    for _epoch in range(epochs):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
    return model, to_float(data.test.images), data.test.labels


STARTED: list[Engine] = []


def start_engine(tmp_path, resume_dir=None, commands=(), **changes) -> Engine:
    """An engine on ``small_config(**changes)``, started. ``commands`` are queued before it starts,
    so they are applied before its first step, whatever the machine's speed: a
    ``Pause(at_step=N)`` there stops the run at exactly step N."""
    config = small_config(**changes)
    run_dir = resume_dir or new_run_dir(config, tmp_path / "runs")
    engine = Engine(config, run_dir, resume=resume_dir is not None)
    for command in commands:
        engine.send(command)
    engine.start()
    STARTED.append(engine)
    return engine


def stop_started_engines() -> None:
    """Stop every engine a test started, so none outlives its test (even a failing one)."""
    while STARTED:
        STARTED.pop().stop(timeout=30)


def wait_for(engine: Engine, predicate, timeout: float = 60.0):
    """Poll snapshots until predicate(snapshot) holds; return that snapshot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = engine.latest()
        if predicate(snap):
            return snap
        time.sleep(0.02)
    raise AssertionError(
        f"timed out; last snapshot state={engine.latest().state} "
        f"step={engine.latest().step} events={[e.message for e in engine.latest().events][-5:]}"
    )


def attach_when_listening(run_dir, process, client="test", timeout: float = 300.0) -> EngineClient:
    """A client of the engine ``process`` runs for ``run_dir``, once it answers on its socket.
    The engine takes the run's lock (``engine_alive``) before its control socket listens, so a
    run seen alive may refuse a client for a moment; this retries until the handshake succeeds,
    and fails at once if the process ends."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the engine process ended with {process.returncode}"
        try:
            return EngineClient.connect(run_dir, client, timeout=60)
        except EngineUnavailable:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def run_to_end(engine: Engine, timeout: float = 120.0):
    assert engine.join(timeout), "engine did not finish in time"
    return engine.latest()


# ``python -m rlr_engine.cli`` for a child process a test sends SIGINT to, with Ctrl+C's default
# action (KeyboardInterrupt) whatever this process inherited. A shell without job control (a
# script, CI) starts a background command with SIGINT ignored, its children inherit that, and a
# Python child then raises no KeyboardInterrupt: the signal would be lost and the test would wait
# on for nothing. Set in the child itself: a preexec_fn would run Python between fork and exec,
# which is not safe in a process with threads.
INTERRUPTIBLE_CLI = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('rlr_engine.cli', run_name='__main__', alter_sys=True)"
)


def interruptible_cli(*args: str) -> list[str]:
    """The command line of ``python -m rlr_engine.cli *args`` that Ctrl+C interrupts (INTERRUPTIBLE_CLI)."""
    return [sys.executable, "-c", INTERRUPTIBLE_CLI, *args]
