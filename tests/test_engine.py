import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import run_to_end, small_config, start_engine, wait_for

from rlr_engine.control.records import (
    AttackNow,
    Pause,
    RefreshLayers,
    Resume,
    SaveCheckpoint,
    SetLearningRate,
    SetTau,
    Stop,
    Truncate,
)
from rlr_engine.control.run_dirs import new_run_dir, read_jsonl
from rlr_engine.core.presets import load_preset
from rlr_engine.run.checkpoint import load_checkpoint
from rlr_engine.run.engine import Engine


@pytest.mark.slow
def test_quickstart_trains_well_above_chance(tmp_path):
    config = load_preset("quickstart").replace(snapshot_interval=0.2, epochs=30, device="cpu")  # its first 30 epochs
    from rlr_engine.control.run_dirs import new_run_dir

    engine = Engine(config, new_run_dir(config, tmp_path)).start()
    snap = run_to_end(engine, timeout=300)
    assert snap.state == "finished", snap.message
    assert snap.test_acc > 0.6  # ten classes: chance is 0.1
    assert snap.adversarial is not None and snap.adversarial.eps[0] == 0.0
    assert all(layer.kappa <= 1.1 + 1e-3 for layer in snap.layers if layer.low_rank and layer.name != "fc2")
    assert 0 < snap.compression < 1 and snap.params < snap.dense_params


def test_set_tau_is_reported_in_the_next_snapshot_and_bounds_kappa(tmp_path):
    engine = start_engine(tmp_path, tau=math.inf, epochs=50)
    wait_for(engine, lambda s: s.state == "running" and s.step > 5)
    engine.send(SetTau(0.3))
    snap = wait_for(engine, lambda s: s.tau == 0.3 and any("τ: inf → 0.3" in e.message for e in s.events))
    wait_for(engine, lambda s: s.step > snap.step + 2)  # steps taken under the new τ
    engine.send(RefreshLayers())
    # The refresh's event and its fresh spectra are published together.
    snap = wait_for(engine, lambda s: any(e.message == "layer statistics refreshed" for e in s.events))
    assert all(layer.kappa <= 1.3 + 1e-4 for layer in snap.layers if layer.low_rank)
    engine.stop(30)


def test_truncate_lowers_the_reported_ranks(tmp_path):
    engine = start_engine(tmp_path, rank_fraction=1.0, epochs=50)
    before = wait_for(engine, lambda s: s.state == "running" and s.step > 5 and s.layers)
    ranks = {layer.name: layer.rank for layer in before.layers if layer.low_rank}
    engine.send(Truncate(rank=3))
    snap = wait_for(engine, lambda s: any(e.kind == "truncation" for e in s.events))
    after = {layer.name: layer.rank for layer in snap.layers if layer.low_rank}
    assert all(after[name] == min(3, rank) for name, rank in ranks.items())
    assert snap.rank_fraction < before.rank_fraction
    messages = [e.message for e in snap.events if e.kind == "truncation"]
    assert any("rank 64 → 3" in m for m in messages), messages
    engine.send(Truncate(rank=2, layer=next(iter(after))))
    snap = wait_for(engine, lambda s: s.layers[0].rank == 2)
    wait_for(engine, lambda s: s.step > snap.step + 3)  # training continues at the new shapes
    engine.stop(30)


def test_pause_stops_the_step_counter_and_resume_restarts_it(tmp_path):
    engine = start_engine(tmp_path, epochs=100)
    wait_for(engine, lambda s: s.state == "running" and s.step > 3)
    engine.send(Pause())
    paused = wait_for(engine, lambda s: s.state == "paused")
    # While paused the engine still goes round its loop and answers commands, without a step.
    for request_id in ("a", "b"):
        engine.send(RefreshLayers(), request_id=request_id)
        wait_for(engine, lambda s, request_id=request_id: any(a.request_id == request_id for a in engine.acks))
    assert engine.latest().step == engine.trainer.step == paused.step
    engine.send(Resume())
    wait_for(engine, lambda s: s.state == "running" and s.step > paused.step + 2)
    engine.stop(30)


def test_a_pause_asked_for_at_a_step_stops_the_run_at_that_step_and_past_steps_are_refused(tmp_path):
    engine = start_engine(tmp_path, commands=[Pause(at_step=40), Pause(at_step=7)], epochs=100)
    paused = wait_for(engine, lambda s: s.state == "paused")
    assert paused.step == engine.trainer.step == 7  # the later request replaced the earlier one
    assert [e.message for e in paused.events if e.kind == "info"][-1] == "paused at step 7, as asked"
    scheduled = [e.message for e in paused.events if e.kind == "applied"]
    assert scheduled == ["will pause at step 40", "will pause at step 7"]
    total = engine.trainer.total_steps
    for request_id, step in (("past", 7), ("beyond", total + 1), ("bool", True)):
        engine.send(Pause(at_step=step), request_id=request_id)
    engine.send(Pause(at_step=12), request_id="next")
    engine.send(Resume())
    again = wait_for(engine, lambda s: s.state == "paused" and s.step > 7)
    assert again.step == 12
    acks = {a.request_id: a for a in engine.acks}
    for request_id in ("past", "beyond", "bool"):
        assert acks[request_id].status == "rejected", request_id
        assert f"the run is at step 7; expected an integer in [8, {total}]" in acks[request_id].message
    assert acks["next"].status == "applied"
    engine.stop(30)


@pytest.mark.parametrize(
    "command, reason",
    [
        (SetTau(-1.0), "tau must be"),
        (SetTau(float("nan")), "tau must be"),
        (SetTau(10**400), "tau must be"),  # an integer no float holds
        (SetLearningRate(10**400), "lr must be"),
        (Truncate(theta=10**400), "theta must be"),
        (SetLearningRate(-0.5), "lr must be"),
        (Truncate(theta=1.5), "theta must be"),
        (Truncate(rank=0), "rank must be"),
        (Truncate(theta=0.1, layer="no-such-layer"), "unknown layer"),
        (Resume(), "cannot resume"),
        (AttackNow(attack="nope"), "attack must be"),
        (AttackNow(eps=(2.0,)), "eps must be"),
    ],
)
def test_rejected_commands_change_nothing_and_say_why(tmp_path, command, reason):
    engine = start_engine(tmp_path, epochs=100, rank_fraction=1.0)
    before = wait_for(engine, lambda s: s.state == "running" and s.step > 3 and s.layers)
    engine.send(command, request_id="r1")
    snap = wait_for(engine, lambda s: any(e.kind == "rejected" for e in s.events))
    ack = next(a for a in engine.acks if a.request_id == "r1")
    assert ack.status == "rejected" and ack.kind == command.kind and reason in ack.message
    assert any(e.kind == "rejected" and reason in e.message for e in snap.events)
    assert snap.tau == before.tau and snap.lr == before.lr and snap.state == "running"
    assert [l.rank for l in snap.layers] == [l.rank for l in before.layers]
    engine.stop(30)


def test_truncating_a_dense_model_is_rejected(tmp_path):
    engine = start_engine(tmp_path, method="dense", epochs=100)
    wait_for(engine, lambda s: s.state == "running")
    engine.send(Truncate(theta=0.2))
    snap = wait_for(engine, lambda s: any(e.kind == "rejected" for e in s.events))
    assert any("no low-rank layers" in e.message for e in snap.events if e.kind == "rejected")
    engine.stop(30)


def test_learning_rate_command_changes_the_optimizer(tmp_path):
    engine = start_engine(tmp_path, epochs=100)
    wait_for(engine, lambda s: s.state == "running")
    engine.send(SetLearningRate(0.01))
    wait_for(engine, lambda s: s.lr == 0.01)
    engine.stop(30)


def test_attack_now_reports_accuracy_per_eps(tmp_path):
    engine = start_engine(tmp_path, epochs=100)
    wait_for(engine, lambda s: s.state == "running" and s.step > 20)
    engine.send(AttackNow(attack="fgsm", eps=(0.0, 0.2)))
    snap = wait_for(engine, lambda s: s.adversarial is not None)
    assert snap.adversarial.eps == (0.0, 0.2) and len(snap.adversarial.accuracy) == 2
    assert snap.adversarial.accuracy[1] <= snap.adversarial.accuracy[0]
    engine.stop(30)


def final_state(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")


def test_resume_continues_the_same_curve(tmp_path):
    reference = start_engine(tmp_path / "a", epochs=3, max_steps=50)
    assert run_to_end(reference).state == "finished"
    interrupted = start_engine(tmp_path / "b", commands=[Pause(at_step=7)], epochs=3, max_steps=50)
    paused = wait_for(interrupted, lambda s: s.state == "paused")
    assert paused.step == 7
    interrupted.send(Stop())
    stopped = run_to_end(interrupted)
    assert stopped.state == "stopped" and 7 <= stopped.step < 50
    run_dir = interrupted.run_dir
    resumed = start_engine(tmp_path / "b", resume_dir=run_dir, epochs=3, max_steps=50)
    snap = run_to_end(resumed)
    assert snap.state == "finished" and snap.step == 50
    a, b = final_state(reference.run_dir), final_state(run_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert snap.test_acc == reference.latest().test_acc
    assert snap.curves["train_loss"][0][0] <= paused.step  # the curve before the stop is kept
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert steps == sorted(steps)


def test_a_run_that_died_past_its_checkpoint_resumes_without_the_dead_runs_records(tmp_path):
    settings = dict(epochs=3, max_steps=30)
    engine = start_engine(tmp_path, commands=[Pause(at_step=7)], **settings)
    wait_for(engine, lambda s: s.state == "paused")
    engine.send(Stop())
    assert run_to_end(engine).state == "stopped"
    run_dir = engine.run_dir
    checkpoint_step = load_checkpoint(run_dir)["step"]
    assert checkpoint_step == 7
    # The run went on after its checkpoint and was killed: what it logged since is in the file.
    logged = list(read_jsonl(run_dir / "metrics.jsonl"))
    dead = [
        {**record, "step": step, "loss": 99.0, "acc": 0.0}
        for step in range(checkpoint_step + 1, checkpoint_step + 6)
        for record in logged[-1:]
        if record["type"] == "train"
    ]
    assert dead, logged[-1]
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in dead)
    resumed = start_engine(tmp_path, resume_dir=run_dir, **settings)
    assert run_to_end(resumed).state == "finished"
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    for kind in {r["type"] for r in records}:
        steps = [r["step"] for r in records if r["type"] == kind]
        assert all(a < b for a, b in itertools.pairwise(steps)), (kind, steps)  # increasing, each once
    assert max(r["step"] for r in records) == 30
    assert not any(r.get("loss") == 99.0 for r in records)  # none of the dead run's values


@pytest.mark.slow
def test_a_resumed_run_with_dropout_and_random_attack_starts_is_bit_identical(tmp_path, monkeypatch):
    """The global RNG (dropout masks, PGD's random starts in the evaluations at each epoch's end)
    is restored with the checkpoint: the resumed run draws what the uninterrupted one drew."""
    from rlr_engine.workload import models

    # VGG16's builder (BatchNorm, LeakyReLU, max-pools, dropout before the classifier), narrower.
    monkeypatch.setattr(models, "VGG16_LAYOUT", (8, "M", 16, "M", 16, "M", 32, "M", 512, "M"))
    settings = dict(
        dataset="synthetic-32",
        model="vgg16",
        rank_fraction=0.3,
        batch_size=100,
        epochs=3,
        attack="pgd-linf",
        pgd_steps=2,
        attack_every=1,
        attack_samples=20,
        eps=(0.0, 0.05),
    )
    reference = start_engine(tmp_path / "a", **settings)
    assert run_to_end(reference, timeout=300).state == "finished"
    interrupted = start_engine(tmp_path / "b", commands=[Pause(at_step=20)], **settings)
    wait_for(interrupted, lambda s: s.state == "paused", timeout=300)
    interrupted.send(Stop())
    stopped = run_to_end(interrupted, timeout=300)
    assert (
        stopped.state == "stopped" and stopped.step == 20 and stopped.adversarial_history
    )  # mid-run, attacked already
    resumed = start_engine(tmp_path / "b", resume_dir=interrupted.run_dir, **settings)
    snap = run_to_end(resumed, timeout=300)
    assert snap.state == "finished"
    a, b = final_state(reference.run_dir), final_state(interrupted.run_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert snap.adversarial_history == reference.latest().adversarial_history


def test_non_finite_loss_pauses_keeps_the_checkpoint_and_rolls_back(tmp_path):
    engine = start_engine(tmp_path, epochs=100)
    wait_for(engine, lambda s: any(e.kind == "checkpoint" for e in s.events))
    engine.send(Pause())
    wait_for(engine, lambda s: s.state == "paused")
    good = load_checkpoint(engine.run_dir / "checkpoint.pt")
    with torch.no_grad():
        for p in engine.trainer.model.parameters():
            p.fill_(float("nan"))
    engine.send(Resume())
    snap = wait_for(engine, lambda s: any(e.kind == "error" and "non-finite" in e.message for e in s.events))
    assert snap.state == "paused"
    engine.send(SaveCheckpoint())
    wait_for(engine, lambda s: any(e.kind == "rejected" for e in s.events))
    assert load_checkpoint(engine.run_dir / "checkpoint.pt")["step"] == good["step"]
    engine.send(Resume())
    snap = wait_for(engine, lambda s: any("rolled back" in e.message for e in s.events))
    wait_for(engine, lambda s: s.state == "running" and s.step > good["step"] + 3)
    assert all(torch.isfinite(p).all() for p in engine.trainer.model.parameters())
    engine.stop(30)


def test_stop_writes_a_final_resumable_checkpoint(tmp_path):
    engine = start_engine(tmp_path, epochs=100)
    wait_for(engine, lambda s: s.step > 5)
    assert engine.stop(30)
    snap = engine.latest()
    assert snap.state == "stopped"
    assert load_checkpoint(engine.run_dir)["step"] == snap.step


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from rlr_engine.run.checkpoint import save_atomic
    big = torch.randn(4_000_000)
    i = 0
    while True:
        i += 1
        save_atomic({"step": i, "weights": big}, sys.argv[1])
        print(i, flush=True)
""")


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for delay in (0.05, 0.13, 0.29):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip()  # at least one complete checkpoint exists
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        payload = load_checkpoint(path)
        assert payload["step"] >= 1 and payload["weights"].shape == (4_000_000,)


def test_a_checkpoint_taken_mid_epoch_holds_the_training_curve_up_to_its_step(tmp_path):
    # no window is read on its own (snapshots), and no epoch ends or checkpoints on its own
    engine = start_engine(tmp_path, epochs=100, snapshot_interval=60.0, batch_size=4, checkpoint_every=0)

    def wait_until(predicate, what):
        deadline = time.monotonic() + 60
        while not predicate():
            assert time.monotonic() < deadline, f"no {what}"
            time.sleep(0.05)

    def has_event(kind):
        return any(r["kind"] == kind for r in read_jsonl(engine.run_dir / "events.jsonl"))

    wait_until(lambda: has_event("info"), "start event")
    wait_until(lambda: engine.trainer.step >= 3, "training steps")  # the step counter, not the window
    engine.send(SaveCheckpoint())
    wait_until(lambda: has_event("checkpoint"), "checkpoint event")
    payload = load_checkpoint(engine.run_dir)
    assert payload["step"] > 0
    train = [r for r in read_jsonl(engine.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert train and train[-1]["step"] == payload["step"]
    assert payload["curves"]["train_loss"]["points"][-1][0] == payload["step"]


def test_attached_dashboards_are_told_of_every_event_the_run_records(tmp_path):
    # evaluation, attack and checkpoint events are recorded by the recorder, not the engine:
    # they must still reach the control server as they happen
    class Listener:
        def __init__(self):
            self.events = []

        def event(self, event):
            self.events.append(event)

        def ack(self, ack):
            pass

    config = small_config(epochs=2, attack_every=1)
    listener = Listener()
    engine = Engine(config, new_run_dir(config, tmp_path / "runs")).setup()
    engine.listener = listener
    run_to_end(engine.start())
    told = [(e.seq, e.kind, e.message) for e in listener.events]
    recorded = [(r["seq"], r["kind"], r["message"]) for r in read_jsonl(engine.run_dir / "events.jsonl")]
    assert told == recorded
    assert {"evaluation", "attack", "checkpoint", "info"} <= {kind for _, kind, _ in told}


def test_a_resume_after_the_engine_died_names_the_changes_its_checkpoint_predates(tmp_path):
    import json

    engine = start_engine(tmp_path, epochs=1)
    run_to_end(engine)
    step = load_checkpoint(engine.run_dir)["step"]
    # what an engine killed after a command and before its next checkpoint leaves behind
    with open(engine.run_dir / "events.jsonl", "a") as events:
        died_at = step + 100_000  # beyond any step the resumed engine reaches here
        for seq, message in ((1000, "τ: 0.1 → 0.25"), (1001, f"paused at step {died_at}")):
            events.write(
                json.dumps({"seq": seq, "step": died_at, "time": 0.0, "kind": "applied", "message": message}) + "\n"
            )
    resumed = Engine(small_config(epochs=2), engine.run_dir, resume=True).setup()
    resumed.start()
    try:
        snap = wait_for(resumed, lambda s: any("not in it" in e.message for e in s.events))
        warning = next(e for e in snap.events if "not in it" in e.message)
        assert (
            warning.kind == "warning" and f"checkpoint at step {step}: 2 change(s) applied after it" in warning.message
        )
        assert "τ: 0.1 → 0.25" in warning.message and "set them again" in warning.message
    finally:
        assert resumed.stop(timeout=30)
    # the next resume starts from the checkpoint the resumed engine wrote: nothing of the
    # abandoned history is missing from it
    from rlr_engine.run.distributed import SINGLE
    from rlr_engine.run.recorder import Recorder
    from rlr_engine.run.set_up import set_up

    config = small_config(epochs=3)
    again = set_up(config, SINGLE, Recorder(config, engine.run_dir), resume=True, resume_settings=())
    assert load_checkpoint(engine.run_dir)["step"] > step
    assert not any("not in it" in message for _, message in again.resume_notes)


def test_a_text_file_written_atomically_is_whole_or_as_before(tmp_path):
    from rlr_engine.control.run_dirs import read_run_config, write_config
    from rlr_engine.core.atomic_files import atomic_file, write_text_atomic

    path = tmp_path / "summary.json"
    write_text_atomic(path, '{"state": "stopped"}')
    with pytest.raises(RuntimeError):
        with atomic_file(path) as handle:
            handle.write(b'{"state": "fin')
            raise RuntimeError("killed mid-write")
    assert path.read_text() == '{"state": "stopped"}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left
    write_config(tmp_path, small_config(tau=0.7))
    assert read_run_config(tmp_path).tau == 0.7


def test_trimming_a_jsonl_file_replaces_it_whole_or_leaves_it_as_it_was(tmp_path, monkeypatch):
    from rlr_engine.control.run_dirs import trim_jsonl

    path = tmp_path / "metrics.jsonl"
    before = "".join(f'{{"type": "train", "step": {step}, "loss": {step / 10}}}\n' for step in range(1, 9))
    path.write_text(before + '{"type": "train", "st')  # a torn last line, as a kill leaves it
    replaced = []

    def failing_replace(src, dst):
        replaced.append(Path(dst).name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        trim_jsonl(path, 4)
    assert replaced == ["metrics.jsonl"]  # the rewrite went through the atomic rename
    assert path.read_text() == before + '{"type": "train", "st'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left
    monkeypatch.undo()
    trim_jsonl(path, 4)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    assert path.read_text().endswith("\n")


def test_a_failing_setup_reports_a_message_instead_of_dying(tmp_path):
    engine = start_engine(tmp_path, dataset="mnist", model="lenet5", data_dir=str(tmp_path / "nothing"), download=False)
    snap = run_to_end(engine, timeout=30)
    assert snap.state == "failed"
    assert "mnist" in snap.message and "quickstart" in snap.message and str(tmp_path / "nothing") in snap.message


def test_asking_for_cuda_without_a_gpu_is_a_missing_device_not_a_missing_data_set(monkeypatch):
    from rlr_engine.core.errors import DatasetUnavailable, DeviceUnavailable
    from rlr_engine.run.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU") as info:
        resolve_device("cuda")
    assert not isinstance(info.value, DatasetUnavailable)
    assert resolve_device("auto").type == "cpu"


def test_a_resumed_run_shows_its_earlier_events_and_numbers_on(tmp_path):
    engine = start_engine(tmp_path, epochs=100)
    wait_for(engine, lambda s: s.state == "running" and s.step > 3)
    engine.send(Stop())
    stopped = run_to_end(engine)
    earlier = [e.seq for e in stopped.events]
    resumed = start_engine(tmp_path, resume_dir=engine.run_dir, epochs=100)
    snap = wait_for(resumed, lambda s: s.state == "running" and s.step > stopped.step)
    seqs = [e.seq for e in snap.events]
    assert seqs[: len(earlier)] == earlier, "the events before the stop are shown after the resume"
    assert seqs == sorted(set(seqs)) and seqs[-1] > earlier[-1]
    assert any(e.message.startswith("stopped at step") for e in snap.events)
    resumed.stop(30)


def test_a_dashboard_note_is_recorded_as_an_event_and_a_bad_level_is_rejected(tmp_path):
    from rlr_engine.control.records import Note

    engine = start_engine(tmp_path, epochs=100)
    wait_for(engine, lambda s: s.state == "running")
    engine.send(Note("rejected", "typed '-1': tau must be a number in [0, inf]"), request_id="n1")
    engine.send(Note("shout", "hello"), request_id="n2")
    snap = wait_for(engine, lambda s: any(e.message.startswith("dashboard: typed") for e in s.events))
    assert next(e for e in snap.events if e.message.startswith("dashboard: typed")).kind == "rejected"
    wait_for(engine, lambda s: any(a.request_id == "n2" for a in engine.acks))
    bad = next(a for a in engine.acks if a.request_id == "n2")
    assert bad.status == "rejected" and "note.level = 'shout'" in bad.message
    snap = wait_for(engine, lambda s: any("note.level" in e.message for e in s.events))
    assert not any(e.kind == "applied" and e.message == "noted" for e in snap.events), "a note is one event, not two"
    engine.stop(30)


def test_a_window_no_float_holds_is_rejected_and_the_rank_adaptive_run_goes_on(tmp_path):
    from rlr_engine.control.records import SetAdaptation

    engine = start_engine(
        tmp_path,
        method="robust-dlrt",
        beta=0.01,
        epochs=100,
        rank_fraction=0.25,
        max_rank_fraction=0.75,
        adapt_every=5,
        truncate_theta=0.2,
    )
    before = wait_for(engine, lambda s: s.state == "running" and s.step > 3)
    engine.send(SetAdaptation(adapt_every=10**400), request_id="huge")
    engine.send(SetAdaptation(beta=10**400), request_id="huge-beta")
    wait_for(engine, lambda s: {a.request_id for a in engine.acks} >= {"huge", "huge-beta"})
    acks = {a.request_id: a for a in engine.acks}
    assert acks["huge"].status == "rejected" and "adapt_every must be an integer in [2, 100000]" in acks["huge"].message
    assert acks["huge-beta"].status == "rejected" and "beta must be" in acks["huge-beta"].message
    after = wait_for(engine, lambda s: s.step > before.step + 5)
    assert after.state == "running" and after.adapt_every == 5 and after.beta == 0.01
    engine.stop(30)


def test_the_final_attack_takes_final_attack_samples_and_the_summary_says_how_many(tmp_path, monkeypatch):
    import io
    import json

    from rich.console import Console

    from rlr_engine.cli import console
    from rlr_engine.core.catalog import ATTACKS

    engine = start_engine(tmp_path, epochs=1, max_steps=3, attack_samples=30, final_attack_samples=50)
    snap = run_to_end(engine)
    summary = json.loads((engine.run_dir / "summary.json").read_text())
    assert summary["attack_samples"] == snap.adversarial.samples == 50
    assert any(e.kind == "attack" and "fgsm on 50 test images" in e.message for e in snap.events)
    out = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=out, width=200, no_color=True))
    console.print_summary(snap)
    assert f"accuracy under fgsm on 50 test images at step 3, seed {summary['attack_seed']}" in out.getvalue()
    # By default every test image for fgsm and pgd, the attack's own subset for the slow attacks.
    engine = start_engine(tmp_path / "default", epochs=1, max_steps=3, attack_samples=30, attack="pgd-linf")
    assert run_to_end(engine).adversarial.samples == len(engine.trainer.data.test) == 400
    for attack in ("cw-l2", "autoattack", "square"):
        assert small_config(attack=attack).final_samples == ATTACKS[attack].default_samples > 0


@pytest.mark.slow
def test_an_attack_asked_for_twice_at_the_same_step_gives_the_same_numbers(tmp_path):
    """The run's attacks are seeded from its seed and the step: the same model, the same numbers."""
    engine = start_engine(tmp_path, epochs=100, pgd_steps=1, pgd_step_size=0.001, eps=(0.0, 0.2, 0.4))
    wait_for(engine, lambda s: s.test_acc is not None and s.test_acc > 0.8, timeout=120)  # a random start matters
    engine.send(Pause())
    paused = wait_for(engine, lambda s: s.state == "paused")
    for _ in range(2):
        engine.send(AttackNow(attack="pgd-linf"))
    snap = wait_for(engine, lambda s: len(s.adversarial_history) == 2)
    first, again = snap.adversarial_history
    assert first.step == again.step == paused.step
    assert first.accuracy == again.accuracy, (first, again)
    assert first.seed == again.seed == engine.config.attack_seed(paused.step)
    engine.stop(30)
