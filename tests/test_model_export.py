"""``rlr export RUN --model FILE.pt2 / --onnx FILE.onnx``: a run's model as files that run without
rlr, checked against the run when written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rlr_engine.cli import main
from rlr_engine.run import model_export
from rlr_engine.run.saved_model import load_evaluation_target
from rlr_engine.workload.data import to_float

ROOT = Path(__file__).resolve().parent.parent
FACTORY = """
from torch import nn

def build(num_classes=4):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2),
        nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, num_classes))
"""
# Run in a fresh interpreter that cannot import rlr: the exported program must stand alone.
LOAD_WITHOUT_RLR = """
import importlib.abc, sys

class NoRlr(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("rlr_engine", "rlr_tui"):
            raise ImportError("rlr is not installed here")
        return None

sys.meta_path.insert(0, NoRlr())
import torch

program = torch.export.load(sys.argv[1]).module()
batch = torch.load(sys.argv[2])
with torch.no_grad():
    logits = program(batch["x"])
torch.save({"logits": logits, "accuracy": (logits.argmax(1) == batch["y"]).double().mean().item()}, sys.argv[3])
try:
    import rlr_engine  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("rlr was importable")
"""


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A CondLR run of a factory model on a tensor file, trained for a few steps."""
    tmp = tmp_path_factory.mktemp("export")
    g = torch.Generator().manual_seed(0)
    y_train, y_test = torch.randint(0, 4, (96,), generator=g), torch.arange(40) % 4
    x_train = torch.rand(96, 1, 12, 12, generator=g) * 0.5 + 0.1 * y_train.view(-1, 1, 1, 1)
    x_test = torch.rand(40, 1, 12, 12, generator=g) * 0.5 + 0.1 * y_test.view(-1, 1, 1, 1)
    torch.save({"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}, tmp / "d.pt")
    (tmp / "nets.py").write_text(FACTORY)
    (tmp / "p.toml").write_text(
        'name = "export-me"\ndataset = "tensors:d.pt"\nmodel = "nets.py:build"\nmethod = "lowrank"\ntau = 0.1\n'
        "rank_fraction = 0.5\nepochs = 6\nbatch_size = 16\nlr = 0.05\nval_fraction = 0.0\nattack_every = 0\n"
        'eps = [0.0]\ndevice = "cpu"\n'  # also on a machine with a GPU
    )
    assert main(["train", str(tmp / "p.toml"), "--runs", str(tmp / "runs")]) == 0
    (run,) = (tmp / "runs").iterdir()
    return run


@pytest.mark.slow
def test_program_runs_without_rlr_with_the_runs_outputs_and_accuracy(trained_run, tmp_path, capsys):
    target = tmp_path / "model.pt2"
    assert main(["export", str(trained_run), "--model", str(target)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    _, _, model, images, labels = load_evaluation_target(trained_run, device="cpu")
    x = to_float(images)
    with torch.no_grad():
        expected = model.eval()(x)
    accuracy = (expected.argmax(1) == labels).double().mean().item()
    assert accuracy >= 0.5  # a model that learned something: a wrong argmax would show
    torch.save({"x": x, "y": labels}, tmp_path / "batch.pt")
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_WITHOUT_RLR, str(target), str(tmp_path / "batch.pt"), str(tmp_path / "o.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = torch.load(tmp_path / "o.pt")
    assert (out["logits"] - expected).abs().max() <= 1e-4
    assert out["accuracy"] == accuracy
    params = sum(p.numel() for p in model.parameters())
    assert f"{params:,} parameters" in printed and f"test accuracy {accuracy:.2%} on 40 images" in printed
    assert "factors kept" in printed and "export-me" in printed


def test_merged_program_has_dense_weights_and_the_same_outputs(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--model", str(tmp_path / "m.pt2"), "--merge"]) == 0
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    names = {name for name, _ in program.named_parameters()}
    assert any(n.endswith("weight") for n in names) and not any(n.endswith(".U") for n in names), names
    _, _, model, images, _ = load_evaluation_target(trained_run, device="cpu")
    with torch.no_grad():
        assert (program(to_float(images)) - model.eval()(to_float(images))).abs().max() <= 1e-4
    assert "factors multiplied into dense weights" in " ".join(capsys.readouterr().out.split())


def test_onnx_file_runs_in_onnxruntime_with_the_runs_outputs(trained_run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")  # the export extra
    target = tmp_path / "model.onnx"
    assert main(["export", str(trained_run), "--onnx", str(target)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # one file, no temporaries left
    _, _, model, images, _ = load_evaluation_target(trained_run, device="cpu")
    x = to_float(images)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(got) - model.eval()(x)).abs().max() <= 1e-4


def test_a_file_that_computes_something_else_is_refused_and_nothing_is_written(
    trained_run, tmp_path, monkeypatch, capsys
):
    real_load = torch.export.load

    def tampered(path):
        program = real_load(path)
        module = program.module()
        return type("Loaded", (), {"module": lambda self: lambda x: module(x) + 0.5})()

    monkeypatch.setattr(model_export.torch.export, "load", tampered)
    assert main(["export", str(trained_run), "--model", str(tmp_path / "bad.pt2")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "computes other outputs than the run's model" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_export_requests_are_one_line_and_write_nothing(trained_run, tmp_path, capsys):
    cases = [
        (["export", str(trained_run)], "say what to export"),
        (["export", str(trained_run), "--merge", "--csv", "-"], "--merge applies to --model and --onnx"),
        (["export", str(tmp_path / "nope"), "--model", str(tmp_path / "m.pt2")], "no such run directory"),
        (["export", str(trained_run), "--model", str(tmp_path / "no" / "m.pt2")], "does not exist"),
    ]
    for args, expected in cases:
        assert main(args) == 2, args
        err = " ".join(capsys.readouterr().err.split())
        assert expected in err and err.count("error:") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_export_source_module_is_loaded_only_for_model_exports():
    code = textwrap.dedent(
        """
        import sys
        import rlr_engine.cli.export
        assert "rlr_engine.run.model_export" not in sys.modules
        assert "torch" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_a_model_the_exporter_cannot_trace_is_one_line_and_nothing_is_written(
    trained_run, tmp_path, monkeypatch, capsys
):
    def untraceable(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression u0 > 0\n\nUser stack:\n  File nets.py")

    monkeypatch.setattr(model_export.torch.export, "export", untraceable)
    assert main(["export", str(trained_run), "--model", str(tmp_path / "m.pt2")]) == 2
    err = capsys.readouterr().err
    assert "cannot be exported (torch.export program)" in err and "data-dependent" in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_csv_to_stdout_beside_a_model_export_keeps_stdout_the_csv_alone(trained_run, tmp_path, capsys):
    import csv
    import io

    assert main(["export", str(trained_run), "--csv", "-", "--model", str(tmp_path / "m.pt2")]) == 0
    captured = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(captured.out)))
    assert len(rows) > 1 and {len(row) for row in rows} == {len(rows[0])}, captured.out[-300:]
    assert "torch.export program" not in captured.out and "torch.export program" in captured.err
