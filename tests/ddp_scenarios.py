"""Code that runs inside each rank of a 2-process gloo job started by torch elastic (spawned
processes import this module by name), and the helpers that start such jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_ranks(function, *args, nproc: int = 2):
    """Run ``function(*args)`` on ``nproc`` gloo ranks through torch elastic's launcher API;
    returns {rank: return value}. The agent stops every worker when one fails."""
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
    return elastic_launch(config, function)(*args)


def run_cli(args: list[str], timeout: float = 240.0) -> subprocess.CompletedProcess:
    """``python -m rlr_engine.cli ARGS`` in its own session; on timeout the whole process group
    (launcher, agent, workers) is killed, so nothing outlives the test."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "rlr_engine.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                status = (entry / "status").read_text()
            except OSError:
                continue
            if text in cmdline and "State:\tZ" not in status:
                found.append(int(entry.name))
    return found


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


# -- inside the ranks -----------------------------------------------------------------------
def _join():
    from rlr_engine.run.distributed import join_process_group, ranks_from_environment

    torch.set_num_threads(1)
    ranks = ranks_from_environment()
    join_process_group(ranks, torch.device("cpu"), timeout=timedelta(seconds=90))
    return ranks


def steered_run(root: str, drift: float) -> dict:
    """A 2-rank engine run steered from rank 0: rank 1's factors are pushed off by ``drift``
    after DDP's initial broadcast; paused at step 20 (asked before the start), rank 0 receives
    set τ, truncate and a pause at step 60, then resume; paused at step 60 it answers a command,
    then resumes. Returns what each rank ended with, plus sharded and (rank 0) unsharded
    evaluation and attack of the final weights."""
    from helpers import small_config, wait_for

    from rlr_engine.control.records import Pause, RefreshLayers, Resume, SetTau, Truncate
    from rlr_engine.control.run_dirs import new_run_dir
    from rlr_engine.run.distributed import SINGLE, factor_checksum, leave_process_group
    from rlr_engine.run.engine import Engine
    from rlr_engine.workload.attacks import adversarial_accuracy
    from rlr_engine.workload.data import to_float

    ranks = _join()
    try:
        config = small_config(rank_fraction=1.0, epochs=4, checkpoint_every=0, eval_every=0, attack_samples=150)
        run_dir = ranks.broadcast(str(new_run_dir(config, root)) if ranks.is_main else None)
        engine = Engine(config, run_dir, ranks=ranks).setup()
        if ranks.rank == 1 and drift:
            with torch.no_grad():
                engine.trainer.optimizer.layers[0][1].U.add_(drift)
        if ranks.is_main:
            engine.send(Pause(at_step=20))  # queued before the start: applied before the first step
        engine.start()
        paused_step = None
        if ranks.is_main:
            wait_for(engine, lambda s: s.state == "paused" and s.step == 20)
            for command in (SetTau(0.3), Truncate(rank=3), Pause(at_step=60), Resume()):
                engine.send(command)
            paused_step = wait_for(engine, lambda s: s.state == "paused" and s.step >= 60).step
            # Paused, the ranks still agree on commands: one sent now is answered before the resume.
            engine.send(RefreshLayers(), request_id="while-paused")
            wait_for(engine, lambda s: any(a.request_id == "while-paused" for a in engine.acks))
            engine.send(Resume())
        assert engine.join(120), "engine did not finish"
        trainer, snap = engine.trainer, engine.latest()
        spec = config.attack_spec()
        sharded_attack, _ = trainer.attack(spec, final=False, seed=0)
        sharded_eval = trainer.evaluate_split(trainer.data.test)
        result = {
            "state": snap.state,
            "message": snap.message,
            "step": trainer.step,
            "tau": trainer.tau,
            "ranks": trainer.optimizer.ranks(),
            "checksum": float(factor_checksum(trainer.model)),
            "events": [(e.step, e.kind, e.message) for e in engine.recorder.events],
            "paused_step": paused_step,
            "sharded_attack": sharded_attack,
            "sharded_eval": sharded_eval,
        }
        if ranks.is_main:
            data = trainer.data
            images, labels = data.test.images[trainer.attack_indices], data.test.labels[trainer.attack_indices]
            whole = adversarial_accuracy(trainer.model, images, labels, spec, to_input=to_float)
            result["unsharded_attack"] = tuple(whole[e] for e in spec.eps)
            trainer.ranks = SINGLE
            result["unsharded_eval"] = trainer.evaluate_split(data.test)
        return result
    finally:
        leave_process_group()


def forward_choice_run() -> dict:
    """A 2-rank trainer whose low-rank forwards are timed (made so on the CPU) by clocks that
    disagree: rank 0's makes every layer composed, rank 1's factored. Returns each rank's
    forwards after two steps, how many times its clock ran, and its notes."""
    import gc

    from helpers import small_config

    from rlr_engine.method.forward_choice import ForwardTuner
    from rlr_engine.run import trainer as trainer_module
    from rlr_engine.run.distributed import leave_process_group
    from rlr_engine.run.trainer import Trainer, load_run_data

    ranks = _join()
    calls: list[int] = []

    def clock(work) -> float:  # (factored, composed) alternately: rank 0 prefers composed, rank 1 factored
        calls.append(1)
        return 1.0 + float(len(calls) % 2 == (1 if ranks.rank == 0 else 0))

    trainer_module.tunes_forwards = lambda setting, device, compiled=False: setting == "auto"
    trainer_module.ForwardTuner = lambda measure: ForwardTuner(clock)
    config = small_config()
    device = torch.device("cpu")
    trainer = Trainer(config, load_run_data(config, device), device, ranks)
    for _ in range(2):
        assert trainer.train_step()
    result = {
        "forwards": [layer.forward_mode for layer in trainer._low_rank],
        "timed": len(calls),
        "notes": trainer.take_forward_notes(),
    }
    trainer.unwrap()
    del trainer
    gc.collect()
    leave_process_group(wait_for_others=True)
    return result
