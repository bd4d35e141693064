"""rlr export: metrics.jsonl as one flat CSV."""

import csv
import io
import json
import math

import pytest
from helpers import run_to_end, small_config, start_engine

from rlr_engine.cli import main
from rlr_engine.core.presets import dump_toml

RECORDS = [
    {
        "type": "train",
        "step": 10,
        "epoch": 0,
        "train_loss": 2.1,
        "train_acc": 0.25,
        "lr": 0.05,
        "tau": 0.1,
        "samples_per_s": 1200.5,
        "seconds": 0.5,
    },
    {
        "type": "train",
        "step": 20,
        "epoch": 1,
        "train_loss": float("nan"),
        "train_acc": 0.0,
        "lr": 0.05,
        "tau": float("inf"),
        "samples_per_s": 1100.0,
        "seconds": 0.6,
    },
    {"type": "eval", "step": 20, "epoch": 1, "val_loss": 1.9, "val_acc": 0.4, "test_acc": 0.38},
    {
        "type": "layers",
        "step": 20,
        "compression": 0.75,
        "layers": [
            {"name": "conv1", "rank": 4, "full_rank": 8, "kappa": 1.08, "sigma_max": 2.5},
            {"name": "fc2", "rank": 10, "full_rank": 10, "kappa": 3.5, "sigma_max": 1.25},
        ],
    },
    {
        "type": "attack",
        "step": 20,
        "epoch": 1,
        "attack": "fgsm",
        "eps": [0.0, 0.02, 0.05],
        "accuracy": [0.4, 0.3, 0.125],
        "samples": 100,
    },
]


def make_run(path, records=RECORDS):
    path.mkdir(parents=True)
    (path / "config.toml").write_text(dump_toml(small_config()))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_csv(text):
    rows = list(csv.DictReader(io.StringIO(text)))
    return rows, next(iter(csv.reader(io.StringIO(text))))


def test_a_row_per_record_and_nested_fields_in_named_columns(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    out = tmp_path / "metrics.csv"
    assert main(["export", str(run), "--csv", str(out)]) == 0
    assert "5 records" in capsys.readouterr().out
    rows, header = read_csv(out.read_text())
    assert header[:3] == ["type", "step", "epoch"] and len(header) == len(set(header))
    assert [r["type"] for r in rows] == ["train", "train", "eval", "layers", "attack"]
    assert float(rows[0]["train_loss"]) == 2.1 and rows[0]["val_acc"] == ""
    assert math.isnan(float(rows[1]["train_loss"])) and math.isinf(float(rows[1]["tau"]))
    assert float(rows[2]["test_acc"]) == 0.38
    layers = rows[3]
    assert (float(layers["kappa/conv1"]), int(layers["rank/conv1"]), int(layers["full_rank/fc2"])) == (1.08, 4, 10)
    assert float(layers["sigma_max/fc2"]) == 1.25 and float(layers["compression"]) == 0.75
    attack = rows[4]
    assert [float(attack[c]) for c in ("adv/fgsm/0", "adv/fgsm/0.02", "adv/fgsm/0.05")] == [0.4, 0.3, 0.125]
    assert attack["attack"] == "fgsm" and attack["samples"] == "100" and "eps" not in header


def test_dash_writes_the_csv_to_stdout_and_nothing_else(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["export", str(run), "--csv", "-"]) == 0
    rows, header = read_csv(capsys.readouterr().out)
    assert len(rows) == len(RECORDS) and "kappa/conv1" in header


def test_the_csv_of_a_real_run_holds_every_value_of_its_metrics(tmp_path, capsys):
    engine = start_engine(tmp_path, epochs=1, eps=(0.0, 0.05))
    assert run_to_end(engine).state == "finished"
    assert main(["export", str(engine.run_dir), "--csv", "-"]) == 0
    rows, header = read_csv(capsys.readouterr().out)
    records = [json.loads(line) for line in (engine.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(records)
    for record, row in zip(records, rows):
        for key, value in record.items():
            if isinstance(value, (int, float)):
                assert float(row[key]) == pytest.approx(value, nan_ok=True), key
    layer = next(r for r in records if r["type"] == "layers")["layers"][0]
    assert f"kappa/{layer['name']}" in header and "adv/fgsm/0.05" in header


@pytest.mark.parametrize(
    "setup, csv_arg, expected",
    [
        (lambda tmp: tmp / "absent", "-", "no such run directory"),
        (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt", "-", "is not a run directory"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "-", "no config.toml"),
        (
            lambda tmp: make_run(tmp / "fresh", records=[]).joinpath("metrics.jsonl").unlink() or tmp / "fresh",
            "-",
            "has no metrics.jsonl",
        ),
        (lambda tmp: make_run(tmp / "run"), "{tmp}/no/such/dir/out.csv", "does not exist"),
        (lambda tmp: make_run(tmp / "run"), "{tmp}", "is a directory"),
    ],
)
def test_bad_run_dirs_and_outputs_give_one_clear_line(tmp_path, capsys, setup, csv_arg, expected):
    run = setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["export", str(run), "--csv", csv_arg.format(tmp=tmp_path)]) == 2
    captured = capsys.readouterr()
    assert expected in " ".join(captured.err.split()) and captured.out == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
