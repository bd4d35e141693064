import asyncio
import csv
import json
import os

import pytest
from helpers import attach_when_listening, interruptible_cli
from pilot_waits import settle, until

from rlr_engine.cli import main
from rlr_tui.app import RlrApp
from rlr_tui.screens.comparison import ComparisonScreen

SETTINGS = [
    "--device",
    "cpu",
    "--set",
    "dataset=synthetic",
    "--set",
    "epochs=2",
    "--set",
    "eps=[0, 0.05, 0.1]",
    "--set",
    "attack_every=0",
]


def compare(out, *extra):
    return main(
        [
            "compare",
            "quickstart",
            "--seeds",
            "2",
            *SETTINGS,
            "--set",
            "method=dense",
            *extra,
            "--attacks",
            "fgsm,pgd-linf",
            "--attack-samples",
            "40",
            "--out",
            str(out),
        ]
    )


@pytest.mark.slow
def test_compare_tabulates_seeds_reuses_finished_runs_and_resumes_interrupted_ones(tmp_path):
    out = tmp_path / "cmp"
    assert compare(out) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 1 and rows[0]["seeds"] == 2
    clean, spread = rows[0]["fgsm"]["accuracy"][0]
    assert 0 < clean <= 1 and spread >= 0
    assert rows[0]["pgd-linf"]["samples"] == 40
    table = (out / "results.md").read_text()
    assert "| dense |" in table and "ε=0.05" in table and "pgd-linf" in table
    # Sanity checks ride along: a flags column, a section, and what could not be checked.
    assert "| flags |" in table and "## Sanity checks" in table
    assert "not checked: large-ε accuracy: no large ε is stated for data set 'synthetic'" in table
    assert set(rows[0]["sanity"]) == {"flags", "not_checked"}
    assert [p["attack"] for p in rows[0]["pgd-linf"]["probes"]] == ["fgsm"]
    with open(out / "results.csv") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 2 * 3  # two attacks × three ε
    assert "flags" in records[0]
    for name in ("accuracy_vs_eps_fgsm.png", "accuracy_vs_eps_pgd-linf.png", "kappa_per_layer.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    runs = sorted((out / "runs").iterdir())
    stamps = {run.name: os.path.getmtime(run / "summary.json") for run in runs}
    (runs[1] / "summary.json").unlink()  # as if interrupted after its last checkpoint
    assert compare(out) == 0
    assert os.path.getmtime(runs[0] / "summary.json") == stamps[runs[0].name]  # reused
    assert (runs[1] / "summary.json").is_file()
    assert "resumed" in (runs[1] / "events.jsonl").read_text()

    async def show():
        app = RlrApp(comparison=out)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ComparisonScreen))
            table = app.screen.query_one("#comparison-table")
            await until(pilot, lambda: table.row_count > 0)
            await settle(pilot)
            assert table.row_count == 1
            await pilot.press("a")
            assert app.screen.attacks[app.screen.attack_index] == "pgd-linf"

    asyncio.run(show())


def test_unknown_attack_is_refused_with_the_choices(tmp_path, capsys):
    assert main(["compare", "quickstart", *SETTINGS, "--attacks", "fgsm,nope", "--out", str(tmp_path)]) == 2
    assert "choose from fgsm, pgd-linf, pgd-l2, cw-l2, autoattack, square" in " ".join(capsys.readouterr().err.split())


def test_changed_settings_refuse_to_mix_with_stored_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "quickstart", *SETTINGS, "--set", "method=dense", "--out", str(out)]) == 0
    assert (
        main(["compare", "quickstart", *SETTINGS, "--set", "method=dense", "--set", "lr=0.2", "--out", str(out)]) == 2
    )
    assert "different settings" in capsys.readouterr().err


def test_one_attack_gets_its_own_samples_and_eps_and_the_others_keep_the_presets(tmp_path):
    """AutoAttack is too slow for the test set at every ε: ATTACK=N and ATTACK=E1,E2 narrow it
    alone; the table shows each attack at its own ε, and a changed ε is measured, not reused."""
    out = tmp_path / "cmp"
    args = [
        "compare",
        "quickstart",
        *SETTINGS,
        "--set",
        "method=dense",
        "--set",
        "epochs=1",
        "--attacks",
        "fgsm,pgd-linf",
        "--attack-samples",
        "50",
        "--out",
        str(out),
    ]
    assert main(args + ["--attack-samples", "pgd-linf=30", "--attack-eps", "pgd-linf=0.1"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert rows[0]["fgsm"]["eps"] == [0, 0.05, 0.1] and rows[0]["pgd-linf"]["eps"] == [0.1]
    assert rows[0]["pgd-linf"]["samples"] == 30
    table = (out / "results.md").read_text()
    assert "--attack-samples pgd-linf=30 --attack-eps pgd-linf=0.1" in table
    assert main(args + ["--attack-samples", "pgd-linf=30", "--attack-eps", "pgd-linf=0.05,0.1"]) == 0
    assert json.loads((out / "results.json").read_text())[0]["pgd-linf"]["eps"] == [0.05, 0.1]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--attack-samples", "square=10"], "'square' is not one of the attacks asked for (fgsm)"),
        (["--attack-samples", "fgsm=-3"], "--attack-samples 'fgsm=-3': must be an integer >= 0"),
        (["--attack-eps", "0.1"], "name the attack (ATTACK=E1,E2)"),
        (["--attack-eps", "fgsm=2"], "eps must be a non-empty list of numbers in [0, 1] (pixel units) for fgsm"),
        (["--attack-eps", "fgsm=a,b"], "--attack-eps 'fgsm=a,b': must be a non-empty list of finite numbers >= 0"),
        # read as rlr eval --eps reads budgets (commas or spaces), then checked against the attack's range
        (["--attack-eps", "fgsm=0 2"], "eps must be a non-empty list of numbers in [0, 1] (pixel units) for fgsm"),
    ],
)
def test_bad_per_attack_settings_are_refused_before_anything_runs(tmp_path, capsys, extra, expected):
    assert main(["compare", "quickstart", *SETTINGS, *extra, "--out", str(tmp_path / "cmp")]) == 2
    assert expected in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "cmp").exists()


def test_rank_adaptive_seeds_that_end_at_different_ranks_report_their_mean_compression():
    from rlr_engine.core.presets import load_preset
    from rlr_engine.run.comparison import RunResult, aggregate

    config = load_preset("fmnist-lenet5-condlr-adaptive")

    def result(seed, compression, params):
        summary = {
            "rank_fraction": 1 - compression,
            "compression": compression,
            "params": params,
            "test_acc": 0.85,
            "train_seconds": 1.0,
            "layers": [{"name": "fc1", "kappa": 1.1}],
        }
        fgsm = {"eps": [0.0], "accuracy": [0.85], "samples": 0, "parts": [], "probes": []}
        return RunResult(config.replace(seed=seed), seed, summary, {"fgsm": fgsm})

    (row,) = aggregate([result(0, 0.93, 1000), result(1, 0.95, 800)], ["fgsm"])
    assert row["seeds"] == 2
    assert abs(row["compression"] - 0.94) < 1e-12 and abs(row["rank_fraction"] - 0.06) < 1e-12
    assert row["params"] == 900


def test_a_compared_run_that_fails_or_is_stopped_raises_its_own_exception(tmp_path):
    from helpers import small_config, wait_for

    from rlr_engine.core.errors import RunFailed
    from rlr_engine.run.comparison import RunStopped, ensure_run

    def to_the_end(engine, title):
        engine.join()
        return engine.latest()

    failing = small_config(dataset="mnist", model="lenet5", data_dir=str(tmp_path), download=False)
    with pytest.raises(RunFailed, match="not available"):
        ensure_run(failing, tmp_path / "failing", None, to_the_end)

    def stop_midway(engine, title):
        wait_for(engine, lambda s: s.step > 2)
        engine.stop(30)
        return engine.latest()

    with pytest.raises(RunStopped, match="stopped at step"):
        ensure_run(small_config(epochs=100), tmp_path / "stopped", None, stop_midway)
    assert (tmp_path / "stopped" / "checkpoint.pt").is_file()  # the same command resumes it


@pytest.mark.slow
def test_a_run_attacked_again_for_a_comparison_gives_the_same_numbers_and_records_its_seed(tmp_path):
    from helpers import run_to_end, start_engine

    from rlr_engine.run.comparison import robustness

    engine = start_engine(tmp_path, dataset="digits", method="dense", epochs=1, pgd_steps=1, pgd_step_size=0.001)
    assert run_to_end(engine).state == "finished"
    summary = json.loads((engine.run_dir / "summary.json").read_text())
    measured = []
    for _ in range(2):
        measured.append(robustness(engine.config, engine.run_dir, summary, "pgd-linf", 100, "cpu", [0.0, 0.15, 0.3]))
        (engine.run_dir / "robustness-pgd-linf-100.json").unlink()  # measured again, not read back
    first, again = measured
    assert first["seed"] == again["seed"] == engine.config.attack_seed(summary["steps"])
    assert first["accuracy"] == again["accuracy"] and first["samples"] == 100


@pytest.mark.slow
def test_a_compared_run_is_hosted_like_any_run_listed_as_running_and_steerable(tmp_path):
    import signal
    import subprocess
    import time

    from rlr_engine.control.records import Pause
    from rlr_engine.control.run_dirs import engine_alive, list_runs

    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["compare", "quickstart", *SETTINGS[:2], "--set", "epochs=1000", "--set", "eps=[0, 0.05]", "--out", str(out)]
    proc = subprocess.Popen(
        interruptible_cli(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while not any(engine_alive(d) for d in (out / "runs").glob("*")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        [run_dir] = list((out / "runs").glob("*"))
        client = attach_when_listening(run_dir, proc)  # as rlr-tui --attach does
        assert client.wait(lambda s: s.state == "running", 120).state == "running"
        [info] = list_runs(out / "runs")  # what `rlr runs --runs DIR/runs` lists
        assert info.path == run_dir and info.state == "running" and info.live
        request = client.send(Pause())
        snap = client.wait(lambda s: s.state == "paused", 120)
        assert snap is not None and snap.state == "paused", [a.message for a in client.take_acks()]
        assert any(a.request_id == request and a.applied for a in client.take_acks())
        client.close()
        proc.send_signal(signal.SIGINT)  # a clean stop: the same command resumes it
        assert proc.wait(120) == 130
    finally:
        proc.kill()
    assert not engine_alive(info.path) and (info.path / "checkpoint.pt").is_file()
