"""Undo: a truncation, τ, lr, θ or β change taken back on the real engine (synthetic data); the
history that keeps the states (memory, then disk); what is refused and why."""

import copy
import time
from types import SimpleNamespace

import pytest
import torch
from helpers import run_to_end, start_engine, wait_for

from rlr_engine.control.records import (
    Pause,
    RefreshLayers,
    Resume,
    SetLearningRate,
    SetTau,
    Stop,
    Truncate,
    Undo,
    command_from_dict,
)
from rlr_engine.run.steering import NO_UNDO_DATA_PARALLEL, Steering
from rlr_engine.run.undo import UndoHistory


def answer(engine, request_id, timeout=60.0):
    """The engine's acknowledgement of the command sent with ``request_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ack in list(engine.acks):
            if ack.request_id == request_id:
                return ack
        time.sleep(0.02)
    raise AssertionError(f"no acknowledgement of {request_id}")


def send(engine, command, request_id):
    engine.send(command, request_id=request_id)
    return answer(engine, request_id)


def model_state(engine):
    return {k: v.detach().clone() for k, v in engine.trainer.model.state_dict().items()}


def assert_same(a, b, where="state"):
    """Equal bit for bit: tensors with torch.equal (shape, dtype and every value), the rest with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def train_steps(engine, steps):
    engine.send(Resume())
    start = wait_for(engine, lambda s: s.state == "running").step
    wait_for(engine, lambda s: s.step >= start + steps)
    engine.send(Pause())
    return wait_for(engine, lambda s: s.state == "paused")


def steps_increase(snap):
    steps = [step for step, _ in snap.curves["train_loss"]]
    return steps == sorted(set(steps))


def test_undoing_a_truncation_brings_back_ranks_weights_and_optimizer_state_bit_for_bit(tmp_path):
    engine = start_engine(tmp_path, epochs=100, rank_fraction=1.0, snapshot_interval=0.02)
    wait_for(engine, lambda s: s.state == "running" and s.step > 5 and s.layers)
    engine.send(Pause())
    paused = wait_for(engine, lambda s: s.state == "paused")
    weights, optimizer = model_state(engine), copy.deepcopy(engine.trainer.optimizer.state_dict())
    ranks = {layer.name: layer.rank for layer in paused.layers}

    assert send(engine, Truncate(rank=2), "cut").applied
    cut = wait_for(engine, lambda s: any(layer.rank == 2 for layer in s.layers))
    assert {layer.name: layer.rank for layer in cut.layers} != ranks
    ack = send(engine, Undo(), "undo")
    assert ack.applied and ack.message.startswith("undid the truncation (rank 2)"), ack.message
    undone = wait_for(engine, lambda s: any(e.kind == "applied" and e.message == ack.message for e in s.events))
    assert {layer.name: layer.rank for layer in undone.layers} == ranks
    assert_same(model_state(engine), weights, "model")
    restored = engine.trainer.optimizer.state_dict()
    assert_same(restored["state"], optimizer["state"], "optimizer.state")
    assert_same(restored["param_groups"], optimizer["param_groups"], "optimizer.param_groups")

    # Training goes on from the undone state, at the same shapes, on the same curve.
    after = train_steps(engine, 5)
    assert after.step > undone.step and {layer.name: layer.rank for layer in after.layers} == ranks
    assert steps_increase(after) and after.curves["train_loss"][-1][0] > paused.step
    engine.stop(30)


def test_undoing_a_tau_change_brings_back_tau_and_the_kappa_bound_of_the_old_tau(tmp_path):
    engine = start_engine(tmp_path, epochs=100, tau=0.1, snapshot_interval=0.02)
    wait_for(engine, lambda s: s.state == "running" and s.step > 5)
    engine.send(Pause())
    before = wait_for(engine, lambda s: s.state == "paused")
    weights = model_state(engine)
    assert send(engine, SetTau(float("inf")), "loose").applied
    loose = train_steps(engine, 20)  # trained without the bound
    assert loose.tau == float("inf")
    ack = send(engine, Undo(), "undo")
    assert ack.applied and ack.message.startswith("undid τ 0.1 → inf"), ack.message
    undone = wait_for(engine, lambda s: s.tau == 0.1 and any(e.message == ack.message for e in s.events))
    assert_same(model_state(engine), weights, "model")
    assert all(layer.kappa <= 1.1 + 1e-4 for layer in undone.layers if layer.low_rank)
    after = train_steps(engine, 20)  # the old τ holds again
    assert after.tau == 0.1 and "τ=0.1" in after.method
    assert send(engine, RefreshLayers(), "refresh").applied
    fresh = wait_for(engine, lambda s: any(e.message == "layer statistics refreshed" for e in s.events))
    assert all(layer.kappa <= 1.1 + 1e-4 for layer in fresh.layers if layer.low_rank)
    assert steps_increase(fresh) and fresh.step > loose.step > before.step
    engine.stop(30)


def test_undo_goes_back_one_change_at_a_time_newest_first(tmp_path):
    engine = start_engine(tmp_path, epochs=100, lr=0.05, snapshot_interval=0.02)
    wait_for(engine, lambda s: s.state == "running" and s.step > 3)
    engine.send(Pause())
    wait_for(engine, lambda s: s.state == "paused")
    send(engine, SetLearningRate(0.01), "lr")
    send(engine, SetTau(0.5), "tau")
    first = send(engine, Undo(), "undo-1")
    assert first.message.startswith("undid τ 0.1 → 0.5")
    wait_for(engine, lambda s: s.tau == 0.1 and s.lr == 0.01)
    second = send(engine, Undo(), "undo-2")
    assert second.message.startswith("undid learning rate 0.05 → 0.01")
    wait_for(engine, lambda s: s.lr == 0.05)
    third = send(engine, Undo(), "undo-3")
    assert not third.applied and third.message.startswith("nothing to undo: no truncation, τ, lr, θ or β change")
    engine.stop(30)


def test_undo_is_refused_with_the_reason_when_nothing_can_be_undone_also_after_a_resume(tmp_path):
    engine = start_engine(tmp_path, epochs=100)
    wait_for(engine, lambda s: s.state == "running" and s.step > 3)
    ack = send(engine, Undo(), "early")
    assert not ack.applied
    assert ack.message == "nothing to undo: no truncation, τ, lr, θ or β change since the run started"
    rejected = send(engine, SetTau(-1.0), "bad")  # a rejected change is nothing to undo
    assert not rejected.applied and not send(engine, Undo(), "still").applied
    send(engine, SetTau(0.5), "tau")
    engine.send(Stop())
    stopped = run_to_end(engine)
    assert not (engine.run_dir / "undo").exists()
    resumed = start_engine(tmp_path, resume_dir=engine.run_dir, epochs=100)
    wait_for(resumed, lambda s: s.state == "running")
    ack = send(resumed, Undo(), "after-resume")
    assert not ack.applied
    assert f"since the run resumed at step {stopped.step} (changes from before a resume are not kept)" in ack.message
    resumed.stop(30)


def test_undo_in_a_data_parallel_run_is_refused_as_not_available():
    trainer = SimpleNamespace(adaptation=None, step=0)
    steering = Steering.of_run(trainer, None, lambda kind, message: None, None, distributed=True, resumed=False)
    with pytest.raises(ValueError, match="not available in a data-parallel run"):
        steering.undo()
    assert NO_UNDO_DATA_PARALLEL.startswith("undo is not available")


def test_the_socket_command_undo_reads_as_the_undo_command():
    assert command_from_dict({"kind": "undo"}) == Undo()
    with pytest.raises(ValueError, match="unknown field"):
        command_from_dict({"kind": "undo", "steps": 2})


def history_state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(64, 64, generator=g)}, "theta": 0.1 * seed, "adaptation": None}


def test_the_history_keeps_the_newest_states_and_writes_those_past_its_memory_limit_to_disk(tmp_path):
    one = 64 * 64 * 4  # bytes of one state
    history = UndoHistory(tmp_path / "undo", depth=3, memory_limit=one)  # one state in memory
    for seed in range(1, 6):
        history.remember(f"change {seed}", seed * 10, history_state(seed))
    assert len(history) == 3 and history.dropped == 2  # changes 1 and 2 forgotten
    on_disk = sorted((tmp_path / "undo").iterdir())
    assert len(on_disk) == 2 and [e.state is None for e in history.entries] == [True, True, False]
    for seed in (5, 4, 3):  # newest first, each bit for bit, read back from disk where it went
        entry = history.take()
        assert (entry.label, entry.step) == (f"change {seed}", seed * 10)
        assert_same(entry.state, history_state(seed))
    assert not list((tmp_path / "undo").iterdir())  # a state read back leaves no file
    with pytest.raises(ValueError, match="no change to undo"):
        history.take()
    history.remember("again", 60, history_state(6))
    history.remember("and again", 70, history_state(7))
    history.clear()
    assert len(history) == 0 and not (tmp_path / "undo").exists()


def test_a_state_that_cannot_be_read_back_is_refused_and_nothing_changes(tmp_path):
    history = UndoHistory(tmp_path / "undo", memory_limit=0)
    history.remember("τ 0.1 → 0.5", 10, history_state(1))
    (path,) = (tmp_path / "undo").iterdir()
    path.write_bytes(b"not a state")
    with pytest.raises(ValueError, match=r"could not be read back.*nothing was undone"):
        history.take()
