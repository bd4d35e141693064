"""Data-parallel training on torch.distributed: 2 gloo processes on CPU, synthetic data, tens of
steps. Jobs start through torch's own launcher (torchrun's API), on free local ports."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from ddp_scenarios import forward_choice_run, processes_mentioning, rank_of, run_cli, run_ranks, steered_run
from helpers import small_config

from rlr_engine.control.run_dirs import list_runs
from rlr_engine.control.run_files import TORCHELASTIC
from rlr_engine.core.presets import dump_toml
from rlr_engine.run.checkpoint import load_checkpoint
from rlr_engine.run.distributed import Ranks

# 1200 training images, global batch 63: every epoch ends with a batch of 3 that two ranks split
# 2 + 1, so the equivalence below also covers a last batch that does not split evenly.
# lr 0.02, momentum 0.5: at the suite's usual lr 0.05, momentum 0.9 this small CondLR model
# amplifies rounding (a 1e-7 perturbation of one process's weights grows to 4e-3 in 50 steps with
# no second process involved); here a 1e-6 perturbation stays below 1e-4, so the bound measures
# the data-parallel step, not the sensitivity of the training run.
EQUIVALENCE = dict(
    lr=0.02, momentum=0.5, batch_size=63, epochs=3, max_steps=50, eval_every=1, checkpoint_every=1, attack_samples=200
)


def _preset(tmp_path: Path, **changes) -> str:
    path = tmp_path / "ddp-test.toml"
    path.write_text(dump_toml(small_config(**changes)), encoding="utf-8")
    return str(path)


def _only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _max_weight_difference(a: Path, b: Path) -> float:
    first, second = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert first.keys() == second.keys()
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


def _train(args: list[str], nproc: int) -> None:
    if nproc == 1:
        from rlr_engine.cli import main

        assert main(args) == 0
    else:
        result = run_cli(args + ["--nproc", str(nproc)])
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """The reference: 50 steps in one process."""
    tmp = tmp_path_factory.mktemp("reference")
    _train(["train", _preset(tmp, **EQUIVALENCE), "--runs", str(tmp / "runs")], nproc=1)
    return _only_run(tmp / "runs")


def test_shards_cover_the_batch_once_and_differ_by_at_most_one():
    for n in (0, 1, 25, 63, 64):
        for world in (1, 2, 3):
            shards = [Ranks(r, world).shard(n) for r in range(world)]
            assert [i for s in shards for i in range(n)[s]] == list(range(n))
            sizes = [s.stop - s.start for s in shards]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(tmp_path, one_process_run):
    _train(["train", _preset(tmp_path, **EQUIVALENCE), "--runs", str(tmp_path / "runs")], nproc=2)
    run = _only_run(tmp_path / "runs")
    assert load_checkpoint(run)["step"] == load_checkpoint(one_process_run)["step"] == 50
    assert _max_weight_difference(run, one_process_run) <= 1e-4
    two = json.loads((run / "summary.json").read_text())
    one = json.loads((one_process_run / "summary.json").read_text())
    assert two["state"] == "finished"
    # Evaluation and the final attack are sharded and their counts summed: same accuracies
    # (within one image of 400 for weights that differ by rounding).
    assert abs(two["test_acc"] - one["test_acc"]) <= 1 / 400 + 1e-9
    assert all(abs(a - b) <= 1 / 400 + 1e-9 for a, b in zip(two["adversarial_accuracy"], one["adversarial_accuracy"]))


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
@pytest.mark.slow
def test_resuming_with_another_number_of_processes_continues_the_same_run(tmp_path, one_process_run, first, then):
    runs = tmp_path / "runs"
    _train(["train", _preset(tmp_path, **dict(EQUIVALENCE, max_steps=25)), "--runs", str(runs)], nproc=first)
    run = _only_run(runs)
    assert load_checkpoint(run)["step"] == 25
    _train(["train", "--resume", str(run), "--set", "max_steps=50"], nproc=then)
    assert load_checkpoint(run)["step"] == 50
    assert _max_weight_difference(run, one_process_run) <= 1e-4
    assert json.loads((run / "summary.json").read_text())["state"] == "finished"


@pytest.fixture(scope="module")
def steered(tmp_path_factory) -> dict:
    return run_ranks(steered_run, str(tmp_path_factory.mktemp("steered")), 1e-3)


@pytest.mark.slow
def test_commands_take_effect_on_every_rank_at_the_same_step(steered):
    zero, one = steered[0], steered[1]
    assert zero["state"] == one["state"] == "finished", (zero["message"], one["message"])
    assert zero["tau"] == one["tau"] == 0.3
    assert set(zero["ranks"].values()) == {3} and zero["ranks"] == one["ranks"]
    applied = [
        [(step, message) for step, kind, message in rank["events"] if kind in ("applied", "truncation")]
        for rank in (zero, one)
    ]
    assert applied[0] and applied[0] == applied[1]
    assert zero["paused_step"] == 60
    assert ("applied", zero["paused_step"]) in {(kind, step) for step, kind, _ in one["events"]}
    assert (60, "info", "paused at step 60, as asked") in one["events"]


@pytest.mark.slow
def test_truncation_keeps_ranks_identical_and_training_going(steered):
    zero, one = steered[0], steered[1]
    truncated_at = min(step for step, kind, _ in zero["events"] if kind == "truncation")
    assert zero["step"] == one["step"] > truncated_at + 20
    assert zero["checksum"] == one["checksum"]


@pytest.mark.slow
def test_factor_drift_is_repaired_from_rank_0_with_a_warning(steered):
    zero, one = steered[0], steered[1]
    warnings = [message for _, kind, message in zero["events"] if kind == "warning"]
    assert len(warnings) == 1 and "drifted apart" in warnings[0]
    assert zero["checksum"] == one["checksum"]


@pytest.mark.slow
def test_sharded_evaluation_and_attack_count_every_image_once(steered):
    zero, one = steered[0], steered[1]
    assert zero["sharded_attack"] == one["sharded_attack"]
    assert zero["sharded_eval"][1] == one["sharded_eval"][1]
    n = 150
    assert all(abs(a - b) <= 1 / n + 1e-9 for a, b in zip(zero["sharded_attack"], zero["unsharded_attack"]))
    assert abs(zero["sharded_eval"][1] - zero["unsharded_eval"][1]) <= 1 / 400 + 1e-9
    assert zero["sharded_eval"][0] == pytest.approx(zero["unsharded_eval"][0], rel=1e-5)


def _failure(tmp_path: Path, rank: int, exitcode: int, message: str | None = None, timestamp: int = 100):
    """A ProcessFailure as torch elastic builds it: from the rank's @record error file, if any."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    error_file = tmp_path / f"error-{rank}.json"
    if message is not None:
        error_file.write_text(
            json.dumps(
                {"message": {"message": message, "extraInfo": {"py_callstack": "", "timestamp": str(timestamp)}}}
            ),
            encoding="utf-8",
        )
    failure = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))
    failure.timestamp = timestamp
    return failure


@pytest.mark.slow
def test_the_killed_rank_is_named_not_the_peer_that_lost_it_in_the_same_second(tmp_path):
    """Timestamps have one-second resolution: rank 0 failing in its all-reduce, or stopped by the
    agent's SIGTERM, in the same second as rank 1's SIGKILL is a consequence, not the cause."""
    from rlr_engine.cli.data_parallel import failure_reason, root_failure

    lost_peer = _failure(tmp_path, 0, 1, "RuntimeError: [pair.cc:534] Connection closed by peer [127.0.0.1]:4242")
    killed = _failure(tmp_path, 1, -signal.SIGKILL)
    assert root_failure({0: lost_peer, 1: killed})[0] == 1
    stopped = _failure(tmp_path, 0, -signal.SIGTERM)
    rank, failure = root_failure({0: stopped, 1: killed})
    assert rank == 1 and failure_reason(failure) == "killed by SIGKILL (pid 1001)"
    # A rank that raised its own error first stays the cause, whatever its peers say.
    broken = _failure(tmp_path, 1, 1, "ValueError: data set shard is empty", timestamp=99)
    assert root_failure({0: _failure(tmp_path, 0, -signal.SIGTERM), 1: broken})[0] == 1
    assert (
        root_failure(
            {
                0: _failure(tmp_path, 0, 1, "ValueError: bad", timestamp=100),
                1: _failure(tmp_path, 1, 1, "OSError: disk full", timestamp=100),
            }
        )[0]
        == 0
    )


@pytest.mark.slow
def test_a_crashed_rank_ends_the_run_as_failed_and_keeps_the_checkpoint(tmp_path):
    """SIGKILL rank 1 mid-run: the launcher exits non-zero, the other rank is gone, the last
    checkpoint loads and summary.json says failed and why."""
    import subprocess
    import sys

    from ddp_scenarios import ROOT

    runs = tmp_path / "runs"
    args = [
        sys.executable,
        "-m",
        "rlr_engine.cli",
        "train",
        _preset(tmp_path, epochs=1000, checkpoint_every=1, eval_every=0),
        "--runs",
        str(runs),
        "--nproc",
        "2",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while not (runs.is_dir() and any(runs.iterdir()) and (_only_run(runs) / "checkpoint.pt").is_file()):
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
        run = _only_run(runs)
        victims = [pid for pid in processes_mentioning(str(run)) if rank_of(pid) == 1]
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait()
    assert launcher.returncode == 1
    assert "rank 1 failed" in err and "SIGKILL" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["state"] == "failed"
    assert "rank 1 failed" in summary["error"] and "SIGKILL" in summary["error"]
    assert load_checkpoint(run)["step"] >= 1
    assert [r.summary["state"] for r in list_runs(runs)] == ["failed"]
    assert processes_mentioning(str(run)) == []


@pytest.mark.slow
def test_a_detached_data_parallel_run_is_steered_through_rank_0s_socket(tmp_path):
    """rlr train --detach --nproc 2 (what rlr-tui --nproc 2 starts): it returns once rank 0
    listens; a client sees the step move, its command is applied on every rank, and a stop
    leaves a resumable run and no process behind."""
    from ddp_scenarios import ROOT

    from rlr_engine.control.client import EngineClient
    from rlr_engine.control.detached import start_detached
    from rlr_engine.control.records import SetTau, Stop

    runs = tmp_path / "runs"
    env_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT)
    try:
        run_dir, _pid = start_detached(
            [_preset(tmp_path, epochs=1000, checkpoint_every=1, eval_every=0), "--runs", str(runs), "--nproc", "2"]
        )
    finally:
        if env_path is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = env_path
    client = EngineClient.connect(run_dir, timeout=60)
    try:
        deadline = time.monotonic() + 120
        while (client.latest() is None or client.latest().step < 5) and time.monotonic() < deadline:
            time.sleep(0.1)
        first = client.latest().step
        client.send(SetTau(0.4))
        while client.latest().tau != 0.4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.latest().tau == 0.4 and client.latest().step > first
        client.send(Stop())
        while processes_mentioning(str(run_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        client.close()
        for leftover in processes_mentioning(str(run_dir)):
            os.kill(leftover, signal.SIGKILL)
    assert processes_mentioning(str(run_dir)) == []
    assert json.loads((run_dir / "summary.json").read_text())["state"] == "stopped"
    assert load_checkpoint(run_dir)["optimizer"]["param_groups"][0]["tau"] == 0.4


@pytest.mark.slow
def test_a_data_parallel_resume_refused_at_its_start_leaves_the_run_as_it_was(tmp_path):
    runs = tmp_path / "runs"
    _train(
        [
            "train",
            _preset(tmp_path, method="robust-dlrt", rank_fraction=0.3, max_rank_fraction=0.6, max_steps=10),
            "--runs",
            str(runs),
        ],
        nproc=1,
    )
    run = _only_run(runs)
    before = {name: (run / name).read_text() for name in ("config.toml", "summary.json")}
    refused = run_cli(["train", "--resume", str(run), "--set", "min_rank=99", "--set", "max_steps=20", "--nproc", "2"])
    assert refused.returncode != 0 and "min_rank = 99 is not allowed" in refused.stderr, refused.stderr[-3000:]
    assert {name: (run / name).read_text() for name in before} == before
    _train(["train", "--resume", str(run), "--set", "max_steps=20"], nproc=2)  # the run is still resumable
    assert load_checkpoint(run)["step"] == 20
    assert "max_steps = 20" in (run / "config.toml").read_text()


@pytest.mark.slow
def test_a_data_parallel_run_leaves_nothing_in_the_temporary_directory(tmp_path, monkeypatch):
    """torch elastic's logs go into the run directory, not a torchelastic_* folder per launch in
    the system's temporary directory."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    # torch's own per-user compile cache (torchinductor_<user>, made once by any torch.optim
    # import, shared by every torch program) is not the run's: kept out of the way here
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch-cache"))
    _train(["train", _preset(tmp_path, epochs=1, max_steps=5), "--runs", str(tmp_path / "runs")], nproc=2)
    assert sorted(p.name for p in temp.iterdir()) == []
    assert any((_only_run(tmp_path / "runs") / TORCHELASTIC).iterdir())


@pytest.mark.slow
def test_every_rank_takes_rank_0s_timed_forwards():
    results = run_ranks(forward_choice_run)
    assert results[0]["forwards"] == results[1]["forwards"] == ["composed"] * 3  # rank 1's clock said factored
    assert results[0]["timed"] == 6 and results[1]["timed"] == 0  # rank 0 times, once
    assert len(results[0]["notes"]) == 1 and results[1]["notes"] == []
