"""TensorBoard event files of a run, read back with TensorBoard's own EventAccumulator."""

import math
import sys
import threading
import time

import pytest
from helpers import STARTED, run_to_end, small_config, start_engine, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from rlr_engine.cli import main
from rlr_engine.control.records import Pause, RefreshLayers, Resume, Stop
from rlr_engine.control.run_dirs import new_run_dir, read_jsonl
from rlr_engine.core.errors import PresetError
from rlr_engine.core.presets import dump_toml, load_preset
from rlr_engine.run.engine import Engine
from rlr_engine.run.recorder import Recorder
from rlr_engine.run.tensorboard_log import open_event_file, record_scalars

# The name every metrics field has in TensorBoard (the nested ones keep their column names).
EXPECTED_TAGS = {
    "train_loss": "loss/train",
    "train_acc": "accuracy/train",
    "lr": "optimizer/lr",
    "tau": "optimizer/tau",
    "samples_per_s": "speed/samples_per_s",
    "val_loss": "loss/val",
    "val_acc": "accuracy/val",
    "test_acc": "accuracy/test",
    "compression": "parameters/compression",
}


def read_events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    return accumulator.Reload()


def scalar_points(accumulator, tag):
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def expected_points(run_dir) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per tag, from metrics.jsonl."""
    points: dict[str, list] = {}
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        for tag, value in record_scalars(record):
            points.setdefault(tag, []).append((record["step"], value))
    return points


def assert_same_points(actual, expected, tag):
    assert [s for s, _ in actual] == [s for s, _ in expected], tag
    for (_, a), (_, e) in zip(actual, expected):
        assert a == pytest.approx(e, rel=1e-6, abs=1e-6) or (math.isnan(a) and math.isnan(e)), tag


def test_event_files_hold_every_metric_of_metrics_jsonl_at_its_step(tmp_path):
    engine = start_engine(
        tmp_path, commands=[Pause(at_step=4)], tensorboard=True, epochs=2, attack_every=1, eps=(0.0, 0.02)
    )
    wait_for(engine, lambda s: s.state == "paused")
    engine.send(RefreshLayers())  # a spectrum now, whatever the run's length
    engine.send(Resume())
    snap = run_to_end(engine)
    assert snap.state == "finished", snap.message
    run_dir = engine.run_dir
    events = read_events(run_dir)
    expected = expected_points(run_dir)
    scalars = set(events.Tags()["scalars"])
    assert scalars == set(expected)
    layers = [layer.name for layer in snap.layers]
    assert (
        set(EXPECTED_TAGS.values())
        | {f"rank/{n}" for n in layers}
        | {f"kappa/{n}" for n in layers}
        | {"adv/fgsm/0", "adv/fgsm/0.02"}
        <= scalars
    )
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    for field, tag in EXPECTED_TAGS.items():
        assert_same_points(scalar_points(events, tag), [(r["step"], r[field]) for r in records if field in r], tag)
    kappa = [
        (r["step"], next(l["kappa"] for l in r["layers"] if l["name"] == layers[0]))
        for r in records
        if r["type"] == "layers"
    ]
    assert_same_points(scalar_points(events, f"kappa/{layers[0]}"), kappa, "kappa")
    adversarial = [(r["step"], r["accuracy"][1]) for r in records if r["type"] == "attack"]
    assert len(adversarial) == 2  # the attack after epoch 1 and the final one
    assert_same_points(scalar_points(events, "adv/fgsm/0.02"), adversarial, "adv")
    for tag, points in expected.items():
        assert_same_points(scalar_points(events, tag), points, tag)


def test_sigma_histograms_hold_each_layers_singular_values(tmp_path):
    engine = start_engine(tmp_path, commands=[Pause(at_step=4)], tensorboard=True, epochs=1)
    wait_for(engine, lambda s: s.state == "paused")
    engine.send(RefreshLayers())
    engine.send(Resume())
    snap = run_to_end(engine)
    events = read_events(engine.run_dir)
    assert set(events.Tags()["histograms"]) == {f"sigma/{layer.name}" for layer in snap.layers}
    for layer in snap.layers:  # no truncation: the rank is the same at every histogram
        histograms = events.Histograms(f"sigma/{layer.name}")
        assert histograms and all(h.histogram_value.num == layer.rank for h in histograms)
        assert all(h.histogram_value.min > 0 for h in histograms)
    final = events.Histograms(f"sigma/{snap.layers[0].name}")[-1]
    if final.step == snap.step:
        assert final.histogram_value.max == pytest.approx(snap.layers[0].sigma_max, rel=1e-6)


def test_events_are_written_as_text_under_their_kind(tmp_path):
    engine = start_engine(tmp_path, tensorboard=True, epochs=1)
    run_to_end(engine)
    events = read_events(engine.run_dir)
    written = sorted(
        (tag.split("/")[1], e.step, e.tensor_proto.string_val[0].decode())
        for tag in events.Tags()["tensors"]
        for e in events.Tensors(tag)
    )
    logged = sorted((e["kind"], e["step"], e["message"]) for e in read_jsonl(engine.run_dir / "events.jsonl"))
    assert written == logged and any(kind == "evaluation" for kind, _, _ in written)


def next_second() -> None:
    """Return once the wall clock's whole second has changed: event files named after the
    second they are created in then sort in the order they were created."""
    now = int(time.time())
    while int(time.time()) == now:
        time.sleep(0.01)


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_curves_without_repeated_steps(tmp_path):
    engine = start_engine(tmp_path, commands=[Pause(at_step=7)], tensorboard=True, epochs=3, max_steps=50)
    wait_for(engine, lambda s: s.state == "paused")
    engine.send(Stop())
    stopped = run_to_end(engine)
    assert stopped.state == "stopped"
    run_dir = engine.run_dir
    # A run that went on after its checkpoint and then died left points past it: TensorBoard
    # orders event files by their name, which starts with the second they were created in.
    next_second()
    orphan = SummaryWriter(str(run_dir / "tensorboard"))
    for step in range(stopped.step + 1, stopped.step + 4):
        orphan.add_scalar("loss/train", 99.0, step)
    orphan.close()
    next_second()
    resumed = start_engine(tmp_path, resume_dir=run_dir, tensorboard=True, epochs=3, max_steps=50)
    assert run_to_end(resumed).step == 50
    events = read_events(run_dir)
    train = scalar_points(events, "loss/train")
    steps = [s for s, _ in train]
    assert steps == sorted(set(steps)) and steps[0] <= stopped.step < steps[-1] == 50
    assert 99.0 not in [v for _, v in train]
    for tag, points in expected_points(run_dir).items():
        assert_same_points(scalar_points(events, tag), points, tag)


class FullDiskWriter:
    """An event file whose disk fills at its second scalars record: add_scalars raises OSError (no
    space left) from then on. The first scalars record is always a training window (each epoch's
    closes before its evaluation), so the run has logged its loss once; how many records follow
    depends on time (a window closes per snapshot interval), so the failure is tied to a count
    that every run reaches. ``after_failure`` counts the calls made once it failed."""

    def __init__(self, directory, purge_step):
        self.writer = open_event_file(directory, purge_step)
        self.scalars, self.failed, self.after_failure = 0, False, 0

    def add_scalars(self, *args):
        self.after_failure += self.failed
        self.scalars += 1
        if self.scalars > 1:
            self.failed = True
            raise OSError(28, "No space left on device")
        return self.writer.add_scalars(*args)

    def add_histograms(self, *args):
        self.after_failure += self.failed
        return self.writer.add_histograms(*args)

    def add_text(self, *args):
        self.after_failure += self.failed
        return self.writer.add_text(*args)

    def close(self):
        self.writer.close()


def test_a_failing_writer_warns_once_stops_writing_and_training_goes_on(tmp_path):
    config = small_config(tensorboard=True, epochs=2)
    engine = Engine(config, new_run_dir(config, tmp_path / "runs"))
    writers = []
    engine.recorder.tensorboard.open_writer = lambda d, p: writers.append(FullDiskWriter(d, p)) or writers[-1]
    STARTED.append(engine)
    snap = run_to_end(engine.start())
    assert snap.state == "finished" and snap.step == snap.total_steps, snap.message
    warnings = [e for e in read_jsonl(engine.run_dir / "events.jsonl") if e["kind"] == "warning"]
    assert len(warnings) == 1 and "TensorBoard writing stopped" in warnings[0]["message"]
    assert "No space left on device" in warnings[0]["message"]
    assert len(writers) == 1 and writers[0].failed and writers[0].after_failure == 0  # nothing tried after
    records = list(read_jsonl(engine.run_dir / "metrics.jsonl"))
    assert [r["type"] for r in records if r["step"] == snap.step][-1] == "attack"  # the log is complete
    # training went on past the failure: more training windows were recorded than were written
    assert len([r for r in records if r["type"] == "train"]) >= 2
    assert len(scalar_points(read_events(engine.run_dir), "loss/train")) == 1


class BrokenEventFile:
    """An event file that cannot write anything."""

    def __init__(self, directory, purge_step):
        pass

    def add_scalars(self, *args):
        raise OSError(28, "No space left on device")

    add_histograms = add_text = add_scalars

    def close(self):
        pass


def test_a_writer_failure_reported_while_logging_an_event_becomes_one_warning(tmp_path):
    """The failure is reported at the next call, here an event: the warning is logged through the
    same event path, which must not wait on itself."""
    config = small_config(tensorboard=True)
    recorder = Recorder(config, new_run_dir(config, tmp_path / "runs"))
    recorder.tensorboard.open_writer = BrokenEventFile
    recorder.event(1, "info", "first")
    deadline = time.monotonic() + 30
    while recorder.tensorboard.failure is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the writer thread meets the failure
    logging = threading.Thread(target=recorder.event, args=(2, "info", "second"), daemon=True)
    logging.start()
    logging.join(10)
    assert not logging.is_alive(), "logging an event hung on the TensorBoard failure report"
    recorder.tensorboard.close()
    kinds = [(e["kind"], e["message"]) for e in read_jsonl(recorder.run_dir / "events.jsonl")]
    warnings = [m for k, m in kinds if k == "warning"]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert ("info", "second") in kinds


def test_tensorboard_without_the_extra_names_the_install_command_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    runs = tmp_path / "runs"
    assert main(["train", "quickstart", "--tensorboard", "--runs", str(runs)]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "tensorboard = true" in error and "pip install 'rlr[tensorboard]'" in error
    assert not runs.exists()
    with pytest.raises(PresetError, match="pip install"):
        new_run_dir(load_preset("quickstart", ["tensorboard=true"]), runs)
    assert not runs.exists()
    # Resuming with it does not touch the run either.
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    config_text = dump_toml(small_config(tensorboard=True))
    (run_dir / "config.toml").write_text(config_text)
    (run_dir / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "--resume", str(run_dir), "--set", "epochs=5"]) == 2
    assert "pip install" in capsys.readouterr().err
    assert (run_dir / "config.toml").read_text() == config_text
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.toml"]


def test_the_tensorboard_key_accepts_only_true_or_false():
    with pytest.raises(PresetError, match="tensorboard = 'yes' is not allowed: must be true or false"):
        load_preset("quickstart", ["tensorboard=yes"])
    assert load_preset("quickstart").tensorboard is False


def test_a_run_shorter_than_the_spectra_cadence_still_writes_sigma_histograms_at_its_end(tmp_path):
    """No snapshot falls due while it trains (snapshot_interval of a minute): the histograms of
    its last step are written as it ends, as the spectra of its last snapshot."""
    engine = start_engine(tmp_path, tensorboard=True, epochs=1, max_steps=3, snapshot_interval=60)
    snap = run_to_end(engine)
    assert snap.state == "finished" and snap.layers
    events = read_events(engine.run_dir)
    assert set(events.Tags()["histograms"]) == {f"sigma/{layer.name}" for layer in snap.layers}
    for layer in snap.layers:
        (last,) = [h for h in events.Histograms(f"sigma/{layer.name}") if h.step == snap.step]
        assert last.histogram_value.num == layer.rank
        assert last.histogram_value.max == pytest.approx(layer.sigma_max, rel=1e-6)


def test_a_finished_run_extended_goes_on_from_its_final_checkpoint_on_the_same_curves(tmp_path):
    first = start_engine(tmp_path, tensorboard=True, epochs=1, attack_every=0)
    done = run_to_end(first)
    assert done.state == "finished"
    run_dir = first.run_dir
    extended = start_engine(tmp_path, resume_dir=run_dir, tensorboard=True, epochs=2, attack_every=0)
    snap = run_to_end(extended)
    assert snap.state == "finished" and snap.step == 2 * done.step and snap.epoch == 2
    assert any(e.message == f"epochs: 1 → 2; training goes on to step {snap.step}" for e in snap.events)
    train_steps = [s for s, _ in snap.curves["train_loss"]]
    assert train_steps == sorted(set(train_steps)) and train_steps[0] <= done.step < train_steps[-1]
    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert logged == sorted(set(logged)) and logged[-1] == snap.step
    events = read_events(run_dir)
    for tag, points in expected_points(run_dir).items():
        assert_same_points(scalar_points(events, tag), points, tag)
