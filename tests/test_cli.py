import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rlr_engine.cli import main


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # the test's settings win


def rlr(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rlr_engine.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=ENV)


def test_presets_lists_name_dataset_model_method_and_purpose(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "digits" in out and "CondLR" in out and "fashion-mnist" in out


def test_train_then_eval_on_the_saved_checkpoint(tmp_path):
    result = rlr("train", "quickstart", "--set", "epochs=2", "--set", "eps=[0, 0.1]", "--runs", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "fgsm" in result.stdout and "accuracy" in result.stdout and "Traceback" not in result.stderr
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["eps"] == [0.0, 0.1]
    for name in ("config.toml", "metrics.jsonl", "events.jsonl", "checkpoint.pt"):
        assert (run_dir / name).is_file()
    result = rlr("eval", str(run_dir), "--attack", "pgd-linf", "--eps", "0,0.05", "--samples", "50")
    assert result.returncode == 0, result.stderr
    assert "pgd-linf" in result.stdout and "0.05" in result.stdout


def test_resume_continues_a_run_stopped_midway(tmp_path):
    from rlr_engine.runs import read_jsonl

    proc = subprocess.Popen([sys.executable, "-m", "rlr_engine.cli", "train", "quickstart", "--set", "epochs=200",
                             "--set", "tau=0.3", "--runs", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
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
    result = rlr("train", "--resume", str(run_dir), "--set", "epochs=6")
    assert result.returncode == 0, result.stderr
    assert "resumed quickstart (CondLR τ=0.3)" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["epochs"] == 6 and summary["steps"] == 6 * 34
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert steps == sorted(steps) and steps[0] < stopped["steps"] < steps[-1]  # one curve, continued
    seqs = [e["seq"] for e in read_jsonl(run_dir / "events.jsonl")]
    assert seqs == list(range(1, len(seqs) + 1))  # event numbers continue across the resume


@pytest.mark.parametrize("args, expected", [
    (["train", "nope"], "unknown preset 'nope'"),
    (["train", "quickstart", "--set", "tau=-1"], "tau = -1 is not allowed"),
    (["train", "quickstart", "--set", "tau"], "expected key=value"),
    (["train", "--resume", "/no/such/run"], "is not a run directory"),
    (["eval", "/no/such/checkpoint.pt"], "does not exist"),
    (["eval", "/no/[/such]/checkpoint.pt"], "/no/[/such]/checkpoint.pt does not exist"),  # brackets verbatim
])
def test_user_errors_give_one_clear_line_and_no_traceback(args, expected):
    result = rlr(*args)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_corrupt_checkpoint_is_reported_not_raised(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = rlr("eval", str(bad))
    assert result.returncode == 2 and "unreadable" in result.stderr and "Traceback" not in result.stderr


def test_missing_data_set_exits_non_zero_with_advice_and_leaves_no_run(tmp_path):
    result = rlr("train", "mnist-lenet5-dense", "--set", f"data_dir={tmp_path}", "--set", "download=false",
                 "--runs", str(tmp_path / "runs"))
    assert result.returncode == 1
    assert "not available" in result.stderr and "quickstart" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


def test_a_data_dir_that_does_not_exist_is_an_error_naming_it_and_nothing_is_created(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    result = rlr("train", "mnist-lenet5-dense", "--set", f"data_dir={missing}", "--runs", str(tmp_path / "runs"))
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert f"data_dir = {str(missing)!r} does not exist" in " ".join(result.stderr.split())
    assert not (tmp_path / "no").exists() and not (tmp_path / "runs").exists()


def test_a_corrupt_checkpoint_is_reported_before_the_data_set_loads(tmp_path):
    from rlr_engine.presets import load_preset
    from rlr_engine.runs import new_run_dir

    # The run's data set is missing too: the checkpoint must be the error reported.
    config = load_preset("mnist-lenet5-dense", [f"data_dir={tmp_path / 'nothing'}", "download=false"])
    run_dir = new_run_dir(config, tmp_path / "runs")
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = rlr("train", "--resume", str(run_dir))
    assert result.returncode == 2 and "unreadable" in result.stderr and "not available" not in result.stderr


def test_runs_lists_states(tmp_path):
    rlr("train", "quickstart", "--set", "epochs=1", "--runs", str(tmp_path))
    result = rlr("runs", "--root", str(tmp_path))
    assert "no live or resumable runs" in result.stdout and "--all" in result.stdout
    result = rlr("runs", "--all", "--root", str(tmp_path))
    assert result.returncode == 0 and "finished" in result.stdout and "34/34" in result.stdout


def test_run_names_never_wrap_in_rlr_runs_at_80_columns(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from rlr_engine import cli
    from rlr_engine.presets import load_preset
    from rlr_engine.runs import new_run_dir

    run_dir = new_run_dir(load_preset("fmnist-lenet5-tau0.1-cr80"), tmp_path)
    (run_dir / "checkpoint.pt").write_bytes(b"")  # a stopped run: listed without --all
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=80, no_color=True))
    assert cli.main(["runs", "--root", str(tmp_path)]) == 0
    assert any(line.startswith(run_dir.name) for line in out.getvalue().splitlines()), out.getvalue()


def test_checkpoint_of_another_model_is_reported_not_raised(tmp_path):
    import torch

    from rlr_engine.checkpoint import save_atomic

    result = rlr("train", "quickstart", "--set", "epochs=1", "--runs", str(tmp_path))
    run_dir = next(tmp_path.iterdir())
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    payload["model"] = {"1." + k: v for k, v in payload["model"].items()}  # an older layer layout
    save_atomic(payload, run_dir / "checkpoint.pt")
    result = rlr("eval", str(run_dir), "--samples", "10")
    assert result.returncode == 2 and "does not fit the model" in result.stderr
    assert "Traceback" not in result.stderr
