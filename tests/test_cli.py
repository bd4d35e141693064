import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import interruptible_cli

from rlr_engine.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # the test's settings win
# Where a command trains or evaluates: the CPU, also on a machine with a GPU (the presets say auto).
CPU = ("--device", "cpu")


def rlr(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "rlr_engine.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env or ENV,
    )


def test_presets_lists_name_dataset_model_method_and_purpose(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "digits" in out and "CondLR" in out and "fashion-mnist" in out


@pytest.mark.slow
def test_train_then_eval_on_the_saved_checkpoint(tmp_path):
    result = rlr("train", "quickstart", *CPU, "--set", "epochs=2", "--set", "eps=[0, 0.1]", "--runs", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "fgsm" in result.stdout and "accuracy" in result.stdout and "Traceback" not in result.stderr
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["eps"] == [0.0, 0.1]
    for name in ("config.toml", "metrics.jsonl", "events.jsonl", "checkpoint.pt"):
        assert (run_dir / name).is_file()
    # As in a terminal (rich draws its live display only there): the attack shows its progress.
    terminal = {**ENV, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    result = rlr("eval", str(run_dir), *CPU, "--attack", "pgd-linf", "--eps", "0,0.05", "--samples", "50", env=terminal)
    assert result.returncode == 0, result.stderr
    assert "pgd-linf on 50 test images" in result.stdout and "0.05" in result.stdout
    progress = re.findall(r"pgd-linf, images × ε.*?(\d+)/(\d+)", result.stdout)
    assert progress and progress[-1][0] == progress[-1][1], result.stdout  # counted up to its total


@pytest.mark.slow
def test_resume_continues_a_run_stopped_midway(tmp_path):
    from rlr_engine.control.run_dirs import read_jsonl

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlr_engine.cli",
            "train",
            "quickstart",
            *CPU,
            "--set",
            "epochs=200",
            "--set",
            "tau=0.3",
            "--runs",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for the first epoch's checkpoint
        events = [e for d in tmp_path.iterdir() for e in read_jsonl(d / "events.jsonl")]
        if any(e["kind"] == "checkpoint" for e in events):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    run_dir = next(tmp_path.iterdir())
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["state"] == "stopped" and 0 < stopped["steps"] < 6 * 34, stopped
    result = rlr("train", "--resume", str(run_dir), *CPU, "--set", "epochs=6")
    assert result.returncode == 0, result.stderr
    assert "resumed quickstart (CondLR τ=0.3)" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["epochs"] == 6 and summary["steps"] == 6 * 34
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert steps == sorted(steps) and steps[0] < stopped["steps"] < steps[-1]  # one curve, continued
    seqs = [e["seq"] for e in read_jsonl(run_dir / "events.jsonl")]
    assert seqs == list(range(1, len(seqs) + 1))  # event numbers continue across the resume


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "nope"], "unknown preset 'nope'"),
        (["train", "quickstart", "--set", "tau=-1"], "tau = -1 is not allowed"),
        (["train", "quickstart", "--set", "tau"], "expected key=value"),
        (["train", "--resume", "/no/such/run"], "is not a run directory"),
        (["eval", "/no/such/checkpoint.pt"], "does not exist"),
        (["eval", "/no/[/such]/checkpoint.pt"], "/no/[/such]/checkpoint.pt does not exist"),  # brackets verbatim
    ],
)
def test_user_errors_give_one_clear_line_and_no_traceback(args, expected):
    result = rlr(*args)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_corrupt_checkpoint_is_reported_not_raised(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = rlr("eval", str(bad))
    assert result.returncode == 2 and "unreadable" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_data_set_is_a_user_error_with_advice_and_leaves_no_run(tmp_path):
    result = rlr(
        "train",
        "mnist-lenet5-dense",
        "--set",
        f"data_dir={tmp_path}",
        "--set",
        "download=false",
        "--runs",
        "runs",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "not available" in result.stderr and "quickstart" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_data_dir_that_does_not_exist_is_an_error_naming_it_and_nothing_is_created(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    result = rlr("train", "mnist-lenet5-dense", "--set", f"data_dir={missing}", "--runs", "runs", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert f"data_dir = {str(missing)!r} does not exist" in " ".join(result.stderr.split())
    assert not (tmp_path / "no").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_reported_before_the_data_set_loads_and_changes_nothing(tmp_path, monkeypatch):
    from rlr_engine.control.run_dirs import new_run_dir
    from rlr_engine.core.presets import load_preset

    monkeypatch.chdir(tmp_path)
    # The run's data set is missing too: the checkpoint must be the error reported.
    config = load_preset("mnist-lenet5-dense", [f"data_dir={tmp_path}", "download=false"])
    run_dir = new_run_dir(config, "runs")
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    (run_dir / "config.toml").write_text((run_dir / "config.toml").read_text() + "# the user's note\n")
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.iterdir()}
    result = rlr("train", "--resume", str(run_dir), "--set", "epochs=3", cwd=tmp_path)
    assert result.returncode == 2 and "unreadable" in result.stderr and "data set" not in result.stderr
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.iterdir()} == before


@pytest.mark.slow
def test_runs_lists_states(tmp_path):
    rlr("train", "quickstart", *CPU, "--set", "epochs=1", "--runs", str(tmp_path))
    result = rlr("runs", "--root", str(tmp_path))
    assert "no live or resumable runs" in result.stdout and "--all" in result.stdout
    result = rlr("runs", "--all", "--root", str(tmp_path))
    assert result.returncode == 0 and "finished" in result.stdout and "34/34" in result.stdout


def test_run_names_never_wrap_in_rlr_runs_at_80_columns(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from rlr_engine import cli
    from rlr_engine.control.run_dirs import new_run_dir
    from rlr_engine.core.presets import load_preset

    run_dir = new_run_dir(load_preset("fmnist-lenet5-tau0.1-cr80"), tmp_path)
    (run_dir / "checkpoint.pt").write_bytes(b"")  # a stopped run: listed without --all
    out = io.StringIO()
    monkeypatch.setattr(cli.runs, "console", Console(file=out, width=80, no_color=True))
    assert cli.main(["runs", "--root", str(tmp_path)]) == 0
    assert any(line.startswith(run_dir.name) for line in out.getvalue().splitlines()), out.getvalue()


@pytest.mark.slow
def test_checkpoint_of_another_model_is_reported_not_raised(tmp_path):
    import torch

    from rlr_engine.run.checkpoint import save_atomic

    result = rlr("train", "quickstart", *CPU, "--set", "epochs=1", "--runs", str(tmp_path))
    run_dir = next(tmp_path.iterdir())
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    payload["model"] = {"1." + k: v for k, v in payload["model"].items()}  # an older layer layout
    save_atomic(payload, run_dir / "checkpoint.pt")
    result = rlr("eval", str(run_dir), *CPU, "--samples", "10")
    assert result.returncode == 2 and "does not fit the model" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_summary_names_the_step_its_attack_measured_and_never_wraps_the_preset(monkeypatch):
    import io

    from rich.console import Console

    from rlr_engine.cli import console
    from rlr_engine.control.records import AttackResult, Snapshot

    name = "fmnist-lenet5-condlr-adaptive"
    snap = Snapshot(
        state="stopped",
        preset=name,
        step=1500,
        params=1000,
        dense_params=4000,
        compression=0.75,
        rank_fraction=0.2,
        adversarial=AttackResult(1200, 6, "pgd-linf", (0.0, 0.02), (0.9, 0.7)),
    )
    out = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=out, width=80, no_color=True))
    console.print_summary(snap)
    text = out.getvalue()
    heading = next(line for line in text.splitlines() if "accuracy under pgd-linf" in line)
    assert heading.startswith(f"{name}: "), text  # the name whole, on the heading's line
    assert "at step 1200" in " ".join(text.split()) and "the model is at step 1500" in " ".join(text.split())


def test_readme_quick_start_installs_into_a_virtual_environment_and_ci_runs_its_test_command():
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", quick_start, re.S)
    commands = [line for block in blocks for line in block.splitlines() if line.strip()]
    # A system Python marked externally managed (Debian, Ubuntu) refuses pip outside a venv.
    for line in commands:
        for part in line.split("&&"):
            words = part.split()
            assert words[0] in ("python3", ".venv/bin/pip", ".venv/bin/python", ".venv/bin/rlr-tui"), line
            assert words[0] != "python3" or words[1:3] == ["-m", "venv"], line
    assert any(
        line.startswith("python3 -m venv .venv && ") and line.endswith("rlr-tui quickstart") for line in commands
    )
    assert "download.pytorch.org/whl/cpu" in quick_start and "cu126" in quick_start and "GB" in quick_start
    ci_lines = (root / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci = next(line for line in ci_lines if "pytest" in line and not line.startswith("#"))
    assert ci in commands  # CI runs the README's test command verbatim


@pytest.mark.slow
def test_a_run_deeper_than_a_unix_socket_address_serves_and_is_attached_to(tmp_path, engine_processes):
    from rlr_engine.control.client import EngineClient
    from rlr_engine.control.records import Stop

    root = tmp_path / ("r" * 100)
    result = rlr(
        "train",
        "quickstart",
        *CPU,
        "--set",
        "dataset=synthetic",
        "--set",
        "epochs=500",
        "--runs",
        str(root),
        "--detach",
    )
    assert result.returncode == 0, result.stderr
    run_dir = next(root.iterdir())
    engine_processes.append(run_dir)
    assert len(str(run_dir / "control.sock")) > 107
    client = EngineClient.connect(run_dir)
    try:
        snap = client.wait(lambda s: s.state == "running" and s.step > 0, 60)
        assert snap.state == "running", snap.message
        client.send(Stop())
        assert client.wait(lambda s: s.state == "stopped", 60).state == "stopped"
    finally:
        client.close()
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "control.sock").exists()


def test_without_proc_a_runs_directory_too_deep_for_the_control_socket_is_refused_first(tmp_path, monkeypatch, capsys):
    from rlr_engine.control import unix_socket

    monkeypatch.setattr(unix_socket, "PROC_FD", tmp_path / "no-proc")  # as on macOS
    root = tmp_path / ("r" * 100)
    assert main(["train", "quickstart", "--runs", str(root)]) == 2
    message = "".join(capsys.readouterr().err.split())  # the terminal's width folds the long path
    assert f"--runs{root}" in message and "atmost107" in message, message
    assert not root.exists()


def test_a_start_whose_control_socket_cannot_listen_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    from rlr_engine.run import server

    def cannot_listen(self):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(server.ControlServer, "start", cannot_listen)
    assert main(["train", "quickstart", *CPU, "--set", "epochs=1", "--runs", str(tmp_path)]) == 2
    assert "cannot listen on" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_data_parallel_start_that_fails_leaves_no_run_directory(tmp_path):
    result = rlr(
        "train",
        "mnist-lenet5-dense",
        *CPU,
        "--nproc",
        "2",
        "--set",
        f"data_dir={tmp_path}",
        "--set",
        "download=false",
        "--runs",
        "r",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "not available" in result.stderr  # a worker's user error is the run's
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []


def test_runs_lists_only_what_can_be_attached_or_resumed_unless_all(tmp_path):
    from rlr_engine.control.run_dirs import new_run_dir
    from rlr_engine.core.presets import load_preset

    config = load_preset("quickstart")
    never_saved = new_run_dir(config, tmp_path)  # killed before its first checkpoint
    resumable = new_run_dir(config, tmp_path)
    (resumable / "checkpoint.pt").write_bytes(b"")

    def listed(*flags):
        return {line.split()[0] for line in rlr("runs", *flags, "--root", str(tmp_path)).stdout.splitlines()[1:]}

    assert listed() == {resumable.name}
    assert listed("--all") == {resumable.name, never_saved.name}


def test_every_ended_run_leaves_a_summary_finished_stopped_or_failed(tmp_path, monkeypatch):
    from helpers import run_to_end, start_engine, wait_for

    from rlr_engine.run.trainer import Trainer

    finished = run_to_end(start_engine(tmp_path / "f", epochs=1))
    stopped_engine = start_engine(tmp_path / "s", epochs=100)
    wait_for(stopped_engine, lambda s: s.state == "running" and s.step > 3)
    assert stopped_engine.stop(60)
    train_step = Trainer.train_step

    def breaks_at_step_5(self):
        if self.step >= 5:
            raise RuntimeError("the device went away")
        return train_step(self)

    monkeypatch.setattr(Trainer, "train_step", breaks_at_step_5)
    failed = run_to_end(start_engine(tmp_path / "x", epochs=100))
    for snap, state in ((finished, "finished"), (stopped_engine.latest(), "stopped"), (failed, "failed")):
        summary = json.loads((Path(snap.run_dir) / "summary.json").read_text())
        assert snap.state == summary["state"] == state and summary["steps"] == snap.step
    assert "the device went away" in json.loads((Path(failed.run_dir) / "summary.json").read_text())["error"]


def test_a_resume_keeps_what_was_set_live_unless_it_sets_it_itself(tmp_path):
    from dataclasses import replace

    from helpers import run_to_end, start_engine, wait_for

    from rlr_engine.control.records import SetLearningRate, SetTau
    from rlr_engine.control.run_dirs import read_run_config
    from rlr_engine.run.engine import Engine

    engine = start_engine(tmp_path, epochs=1)  # τ = 0.1, lr = 0.05, momentum = 0.9 in its config
    engine.send(SetTau(0.3))
    engine.send(SetLearningRate(0.02))
    run_to_end(engine)
    config = read_run_config(engine.run_dir)
    kept = Engine(replace(config, epochs=2), engine.run_dir, resume=True).setup()
    assert kept.trainer.tau == 0.3 and "τ=0.3" in kept.method_label and kept.trainer.lr == 0.02
    # a value that differs from the config saved with the checkpoint (config.toml edited) is set
    given = Engine(replace(config, epochs=2, tau=0.5, momentum=0.5), engine.run_dir, resume=True).setup()
    assert given.trainer.tau == 0.5 and "τ=0.5" in given.method_label
    assert given.trainer.optimizer.param_groups[0]["momentum"] == 0.5 and given.trainer.lr == 0.02
    # --set tau=0.1 --set lr=0.05: the preset's own values, set on purpose over the live ones
    told = Engine(replace(config, epochs=2), engine.run_dir, resume=True, resume_settings={"tau", "lr"}).setup()
    assert told.trainer.tau == 0.1 and told.trainer.lr == 0.05
    assert all(group["lr"] == 0.05 for group in told.trainer.optimizer.param_groups)
    told.start()
    try:
        snap = wait_for(told, lambda s: any("set on resume" in e.message for e in s.events))
        note = next(e.message for e in snap.events if "set on resume" in e.message)
        assert "lr: 0.02 → 0.05" in note and "tau: 0.3 → 0.1" in note
    finally:
        told.stop(timeout=30)


@pytest.mark.slow
def test_a_resume_refuses_to_change_what_its_checkpoint_was_trained_with(tmp_path):
    run_dir = _stopped_quickstart_run(tmp_path)
    before = (run_dir / "config.toml").read_text()
    for setting, shown in (
        ("method=dense", 'method = "lowrank"'),
        ("rank_fraction=0.5", "rank_fraction = 0.2"),
        ("seed=3", "seed = 0"),
    ):
        result = rlr("train", "--resume", str(run_dir), "--set", setting, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        message = " ".join(result.stderr.split())
        assert f"--set {setting}: {setting.split('=')[0]} cannot change when a run resumes" in message
        assert f"trained with {shown}" in message and "Traceback" not in message
    assert (run_dir / "config.toml").read_text() == before


def _stopped_quickstart_run(tmp_path):
    result = rlr(
        "train",
        "quickstart",
        *CPU,
        "--set",
        "max_steps=3",
        "--set",
        "eval_every=0",
        "--set",
        "attack_every=0",
        "--runs",
        "runs",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


@pytest.mark.slow
def test_a_setting_the_model_cannot_take_is_reported_without_a_traceback_and_leaves_no_run(tmp_path):
    result = rlr(
        "train", "quickstart", "--set", "method=condlr-adaptive", "--set", "min_rank=50", "--runs", "runs", cwd=tmp_path
    )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "min_rank = 50 is not allowed: layer" in message and "must be <=" in message
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_checkpoint_from_another_kind_of_device_resumes_with_a_warning(tmp_path):
    import torch

    from rlr_engine.run.checkpoint import load_checkpoint, save_atomic

    run_dir = _stopped_quickstart_run(tmp_path)
    payload = load_checkpoint(run_dir)
    payload.pop("format")
    payload["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: seed and offset
    save_atomic(payload, run_dir / "checkpoint.pt")
    result = rlr("train", "--resume", str(run_dir), "--set", "max_steps=6", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(
        e["kind"] == "warning" and "data-order generator belongs to another kind of device" in e["message"]
        for e in events
    )
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 6


def test_an_attack_whose_package_is_missing_is_reported_before_the_run_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # as if the attacks extra were not installed
    for argv in (
        ["train", "quickstart", "--set", "attack=square"],
        ["train", "quickstart", "--set", "attack=autoattack", "--detach"],
    ):
        assert main([*argv, "--runs", "runs"]) == 2
        message = " ".join(capsys.readouterr().err.split())
        assert f"attack = '{argv[3].split('=')[1]}': autoattack and square need the optional package" in message
        assert "pip install 'rlr[attacks]'" in message
    assert not (tmp_path / "runs").exists()


def test_a_run_name_that_would_leave_its_directory_is_refused_and_nothing_is_written(tmp_path):
    from rlr_engine.control.run_dirs import new_run_dir
    from rlr_engine.core.config import RunConfig
    from rlr_engine.core.errors import PresetError

    for name in ("../../escaped", "a/b"):
        result = rlr(
            "train", "quickstart", "--set", f"name={name}", "--set", "epochs=1", "--runs", str(tmp_path / "runs")
        )
        assert result.returncode == 2 and f"name = '{name}' is not allowed" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []
    with pytest.raises(PresetError, match="name = 'a/b' is not allowed"):  # a config built without a preset
        new_run_dir(RunConfig(name="a/b"), tmp_path / "runs")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_during_an_evaluation_ends_it_with_a_message_not_a_traceback(tmp_path):
    run_dir = _stopped_quickstart_run(tmp_path)
    proc = subprocess.Popen(
        interruptible_cli(
            "eval",
            str(run_dir),
            *CPU,
            "--attack",
            "pgd-linf",
            "--steps",
            "10000",
            "--eps",
            "0,0.1,0.2,0.3",
            "--samples",
            "0",
            "--no-probes",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp_path,
    )
    try:
        # The heading is printed once the model and data are loaded, as the attack starts.
        heading = proc.stdout.readline()
        assert "pgd-linf on" in heading, heading
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # failed: the attack would otherwise run on for hours
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "error: interrupted" in err and "Traceback" not in out + err


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_an_export_quietly_and_runs_takes_the_runs_flag(tmp_path):
    run_dir = _stopped_quickstart_run(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlr_engine.cli", "export", str(run_dir), "--csv", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    proc.stdout.close()  # the reader is gone before the first line (as `| head -1` is after one)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == "", err
    listed = rlr("runs", "--all", "--runs", str(tmp_path / "runs"))
    assert listed.returncode == 0 and run_dir.name in listed.stdout


def test_the_tensorboard_flag_reaches_data_parallel_and_detached_runs_as_a_setting(monkeypatch):
    from rlr_engine import cli
    from rlr_engine.cli import data_parallel

    seen = []
    monkeypatch.setattr(data_parallel, "launch", lambda args: seen.append(list(args.set)) or 0)
    monkeypatch.setattr(cli.train, "start_detached_run", lambda args: seen.append(list(args.set)) or 0)
    assert main(["train", "quickstart", "--tensorboard", "--nproc", "2"]) == 0
    assert main(["train", "quickstart", "--tensorboard", "--detach"]) == 0
    assert seen == [["tensorboard=true"], ["tensorboard=true"]]


# Each command line is run by one interpreter in turn; after each, no torch module may be loaded.
_NO_TORCH = """
import contextlib, io, json, sys
from rlr_engine.cli import main

for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    torch = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print(json.dumps([argv, code, out.getvalue()[:200], err.getvalue()[:300], torch[:3]]))
"""


def test_help_listings_export_and_every_validation_error_load_no_torch(tmp_path):
    """What answers at once must not wait for torch's import (seconds): help, version, presets,
    runs, export and the refusal of a bad command line."""
    from rlr_engine.control.run_dirs import new_run_dir
    from rlr_engine.core.presets import load_preset

    run_dir = new_run_dir(load_preset("quickstart"), tmp_path / "runs")
    (run_dir / "metrics.jsonl").write_text('{"type": "train", "step": 1, "train_loss": 2.0}\n')
    run = str(run_dir)
    runs = str(tmp_path / "runs")
    lines = [
        (["--help"], 0),
        (["--version"], 0),
        (["train", "--help"], 0),
        (["presets"], 0),
        (["runs", "--root", runs], 0),
        (["runs", "--all", "--root", runs], 0),
        (["export", run, "--csv", "-"], 0),
        (["export", run, "--csv", str(tmp_path / "m.csv")], 0),
        (["train", "quickstart", "--set", "tau=fast", "--runs", runs], 2),
        (["train", "quickstart", "--set", "typo=1", "--runs", runs], 2),
        (["train", "quickstart", "--set", "tau=1e400", "--nproc", "2", "--runs", runs], 2),
        (["train", "quickstart", "--set", "epochs=-1", "--detach", "--runs", runs], 2),
        (["train", "--resume", str(tmp_path / "nope")], 2),
        (["eval", run, "--seed", "-1"], 2),
        (["eval", run, "--attack", "fgsm", "--eps", "0,2"], 2),
        (["eval", str(tmp_path / "nope")], 2),
        (["eval", run], 2),  # a run without a checkpoint
        (["compare", "quickstart", "--attacks", "nope", "--out", str(tmp_path / "c")], 2),
        (["export", str(tmp_path / "nope"), "--csv", "-"], 2),
        (["train", "quickstart", "--nope"], 2),  # argparse's own refusal
    ]
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, json.dumps([argv for argv, _ in lines])],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [argv for argv, *_ in reports] == [argv for argv, _ in lines]
    for (argv, code, out, err, torch), (_, expected) in zip(reports, lines):
        assert code == expected, (argv, code, out, err)
        assert torch == [], f"rlr {' '.join(argv)} loaded {torch}"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]  # the refused made nothing


def test_rlr_and_rlr_tui_print_their_version(capsys):
    from rlr_engine import __version__
    from rlr_tui.app import parse_args

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"rlr {__version__}\n"
    with pytest.raises(SystemExit) as done:
        parse_args(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"rlr-tui {__version__}\n"


def test_output_off_a_terminal_is_never_wrapped_and_has_no_trailing_spaces(tmp_path):
    """Piped (a file, a CI log): an error, rlr runs and a Markdown row each stay one line
    however long, as the terminal's 80 columns no longer apply."""
    from rlr_engine.control.run_dirs import new_run_dir
    from rlr_engine.core.presets import load_preset

    env = {key: value for key, value in ENV.items() if key not in ("COLUMNS", "LINES")}
    run_dir = new_run_dir(load_preset("fmnist-lenet5-tau0.1-cr80"), tmp_path / "runs")
    listed = rlr("runs", "--all", "--root", str(tmp_path / "runs"), env=env)
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(run_dir.name))
    assert "fmnist-lenet5-tau0.1-cr80 · step" in row and len(row) > 80
    assert all(line == line.rstrip() for line in listed.stdout.splitlines()), listed.stdout
    refused = rlr("train", "quickstart", "--set", "optimizer=" + "x" * 100, env=env)
    assert refused.returncode == 2
    (message,) = refused.stderr.splitlines()
    assert message.startswith("error:") and "x" * 60 in message and len(message) > 120
    table_row = "| " + " | ".join(["accuracy 12.3 ± 0.4"] * 8) + " |"
    echo = f"from rlr_engine.cli.console import console; console.print({table_row!r}, markup=False)"
    echoed = subprocess.run(
        [sys.executable, "-c", echo],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert echoed.stdout == table_row + "\n"


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("nproc", ["1", "2"])
def test_asking_for_cuda_without_a_gpu_is_a_user_error(tmp_path, nproc):
    result = rlr("train", "quickstart", "--device", "cuda", "--nproc", nproc, "--runs", "runs", cwd=tmp_path)
    assert result.returncode == 2 and "CUDA GPU" in result.stderr and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc", "2"], "cuda_graphs = 'on' captures the step of one process, but the run trains in 2"),
        (["--set", "method=robust-dlrt"], "cuda_graphs = 'on' is not allowed with method = 'robust-dlrt'"),
        (["--set", "reference_compat=true"], "cuda_graphs = 'on' is not allowed with reference_compat = true"),
    ],
)
def test_graphs_on_where_the_step_cannot_be_captured_is_one_line_before_anything_starts(tmp_path, args, message):
    result = rlr("train", "quickstart", "--set", "cuda_graphs=on", *args, "--runs", "runs", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.splitlines() == [result.stderr.strip()]
    assert message in result.stderr and "'auto' or 'off'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_a_finished_run_resumes_only_with_more_epochs_and_then_trains_them(tmp_path, capsys):
    fast = ["--set", "dataset=synthetic", "--set", "attack_every=0", "--runs", str(tmp_path)]
    assert main(["train", "quickstart", "--set", "epochs=1", *fast]) == 0
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    before = {path.name: path.stat().st_mtime_ns for path in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "the run finished after 1 epochs" in err and "--set epochs=N with N > 1" in err
    assert {path.name: path.stat().st_mtime_ns for path in run_dir.iterdir()} == before  # nothing changed
    assert main(["train", "--resume", str(run_dir), "--set", "epochs=2"]) == 0
    extended = json.loads((run_dir / "summary.json").read_text())
    assert extended["state"] == "finished" and extended["epochs"] == 2 and extended["steps"] == 2 * summary["steps"]
