"""A model and data of the user's: torchvision builders and factories, weights, image folders and
tensor files, layer selection and ranks by energy, warm starts — and one clear line for every
bad input, with nothing created."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from rlr_engine import low_rank_layers, to_low_rank
from rlr_engine.cli import main
from rlr_engine.core.config import RunConfig
from rlr_engine.core.errors import DataError, DatasetUnavailable, ModelError, PresetError
from rlr_engine.core.presets import load_preset, resume_config
from rlr_engine.run.checkpoint import save_atomic
from rlr_engine.run.network import build_network, load_run_data
from rlr_engine.workload.data import to_float

ROOT = Path(__file__).resolve().parent.parent
FACTORY = """
from torch import nn

def build(num_classes=3, width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=2, padding=1, dilation=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, num_classes))

def not_a_model(**kwargs):
    return "a string"
"""


def write_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class=6, size=32, split=True) -> Path:
    """A few PNGs per class (each class its own colour, plus noise), as ImageFolder reads them."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    parts = (("train", per_class), ("test", 3)) if split else (("", per_class),)
    for part, count in parts:
        for c, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = torch.zeros(3, size, size)
                base[c] = 0.8
                pixels = ((base + 0.2 * torch.rand(3, size, size, generator=g)).clamp(0, 1) * 255).to(torch.uint8)
                Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


def config(tmp_path: Path, **changes) -> RunConfig:
    base = dict(
        name="own",
        dataset=f"imagefolder:{write_image_folder(tmp_path / 'images')}",
        model="torchvision:resnet18",
        model_args={"num_classes": 3},
        method="dense",
        epochs=1,
        batch_size=8,
        val_fraction=0.0,
        attack_every=0,
        eval_every=0,
        eps=(0.0, 0.01),
        attack_samples=4,
    )
    base.update(changes)
    return RunConfig(**base)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# -- data ----------------------------------------------------------------------------------------
def test_image_folder_with_train_and_test_loads_as_uint8_with_measured_normalisation(tmp_path):
    c = config(tmp_path, val_fraction=0.25)
    data = load_run_data(c, "cpu")
    assert data.train.images.dtype == torch.uint8 and tuple(data.train.images.shape[1:]) == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (14, 4, 9, 3)
    assert data.normalization_measured
    pixels = data.train.images.double() / 255
    assert data.mean == pytest.approx(tuple(pixels.mean(dim=(0, 2, 3)).tolist()), abs=1e-5)
    assert data.std == pytest.approx(tuple(pixels.std(dim=(0, 2, 3), unbiased=False).tolist()), abs=1e-5)


def test_one_image_folder_is_split_by_test_fraction_with_the_seed_and_resized_once(tmp_path):
    root = write_image_folder(tmp_path / "flat", per_class=10, split=False)
    c = config(tmp_path, dataset=f"imagefolder:{root}", test_fraction=0.2, image_size=16, mean=[0.5], std=[0.25])
    a, b = load_run_data(c, "cpu"), load_run_data(c, "cpu")
    other = load_run_data(c.replace(seed=1), "cpu")
    assert (len(a.train), len(a.test)) == (24, 6) and tuple(a.test.images.shape[1:]) == (3, 16, 16)
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, other.test.images)  # another seed, another split
    assert a.mean == (0.5, 0.5, 0.5) and not a.normalization_measured


def test_train_and_test_folders_of_different_image_sizes_are_one_data_error_unless_resized(tmp_path):
    import shutil

    root = write_image_folder(tmp_path / "images", size=32)
    shutil.rmtree(root / "test")
    shutil.move(write_image_folder(tmp_path / "small", size=24) / "test", root / "test")
    c = RunConfig(dataset=f"imagefolder:{root}", model="mlp", val_fraction=0.0)
    with pytest.raises(DataError, match=r"train/ images are 3×32×32, test/ images 3×24×24.*image_size"):
        load_run_data(c, "cpu")
    data = load_run_data(c.replace(image_size=16), "cpu")
    assert data.train.images.shape[1:] == data.test.images.shape[1:] == (3, 16, 16)


def test_tensor_file_loads_and_refuses_images_outside_unit_range(tmp_path):
    g = torch.Generator().manual_seed(0)
    good = {
        "x_train": torch.rand(20, 1, 12, 12, generator=g),
        "y_train": torch.randint(0, 4, (20,), generator=g),
        "x_test": torch.rand(8, 12, 12, generator=g),  # N×H×W: one channel
        "y_test": torch.arange(8) % 4,
    }
    torch.save(good, tmp_path / "d.pt")
    data = load_run_data(RunConfig(dataset=f"tensors:{tmp_path / 'd.pt'}", model="mlp", val_fraction=0.0), "cpu")
    assert torch.equal(data.test.images, (good["x_test"] * 255).round().to(torch.uint8).unsqueeze(1))
    assert data.num_classes == 4 and len(data.train) == 20
    torch.save(dict(good, x_train=good["x_train"] * 255), tmp_path / "bad.pt")
    with pytest.raises(DataError, match=r"x_train holds values in \[0\.0\d+, 25\d\.\d+\]; images must be in \[0, 1\]"):
        load_run_data(RunConfig(dataset=f"tensors:{tmp_path / 'bad.pt'}", model="mlp"), "cpu")


def test_a_tensor_file_with_non_finite_pixels_is_refused(tmp_path):
    x = torch.rand(8, 1, 6, 6)
    x[3, 0, 2, 2] = float("nan")
    y = torch.arange(8) % 2
    torch.save({"x_train": x, "y_train": y, "x_test": torch.rand(4, 1, 6, 6), "y_test": y[:4]}, tmp_path / "d.pt")
    with pytest.raises(DataError, match=r"x_train holds values in \[nan, nan\]; images must be in \[0, 1\]"):
        load_run_data(RunConfig(dataset=f"tensors:{tmp_path / 'd.pt'}", model="mlp"), "cpu")


# -- models, weights, conversion -------------------------------------------------------------------
def test_torchvision_model_starts_from_a_state_dict_file(tmp_path):
    reference = torchvision.models.resnet18(num_classes=3)
    torch.save(reference.state_dict(), tmp_path / "resnet.pt")
    c = config(tmp_path, weights=str(tmp_path / "resnet.pt"), mean=[0.0], std=[1.0])
    data = load_run_data(c, "cpu")
    notes: list[str] = []
    model = build_network(c, data, notes=notes)
    x = to_float(data.test.images)
    assert torch.allclose(outputs(model, x), outputs(reference, x), atol=1e-5)
    assert any("loaded 122 tensors" in n for n in notes)


@pytest.mark.slow  # twenty SVDs of ResNet-18's convolutions
def test_at_full_energy_the_converted_model_computes_what_the_pretrained_one_does(tmp_path):
    reference = torchvision.models.resnet18(num_classes=3)
    torch.save(reference.state_dict(), tmp_path / "resnet.pt")
    c = config(tmp_path, weights=str(tmp_path / "resnet.pt"), method="lowrank", tau=float("inf"), rank_energy=1.0)
    data = load_run_data(c, "cpu")
    model = build_network(c, data)
    layers = dict(low_rank_layers(model))
    assert len(layers) == 20 and "fc" not in layers  # every conv; the classifier stays dense
    assert dict(low_rank_layers(model))["layer2.0.downsample.0"].in_dim == 64  # a 1×1 conv with stride 2
    x = to_float(data.test.images)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    assert (outputs(model, x) - outputs(reference, (x - mean) / std)).abs().max() <= 1e-4


def test_at_energy_0_9_each_layer_keeps_the_fewest_singular_values_holding_90_percent():
    dense = torchvision.models.resnet18(num_classes=3).eval()
    sigmas = {
        n: torch.linalg.svdvals(m.weight.detach().flatten(1).double())
        for n, m in dense.named_modules()
        if isinstance(m, nn.Conv2d) and n.startswith("layer3")
    }
    model = to_low_rank(dense, rank_energy=0.9, include=["layer3.*"])
    converted = dict(low_rank_layers(model))
    assert set(converted) == set(sigmas)
    for name, sigma in sigmas.items():
        energy = sigma.square().cumsum(0) / sigma.square().sum()
        r = converted[name].rank
        assert energy[r - 1] >= 0.9 - 1e-12, name
        assert r == 1 or energy[r - 2] < 0.9, name  # one fewer would not do


def test_include_and_exclude_select_layers_by_name_and_a_pattern_matching_nothing_is_refused():
    model = to_low_rank(torchvision.models.resnet18(num_classes=3), 0.5, include=["layer3.*"], exclude=["*downsample*"])
    assert sorted(dict(low_rank_layers(model))) == [f"layer3.{b}.conv{c}" for b in (0, 1) for c in (1, 2)]
    with pytest.raises(ValueError, match=r"include pattern 'layer9\.\*' matches no Linear or Conv2d"):
        to_low_rank(torchvision.models.resnet18(), include=["layer9.*"])
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"layer '0' cannot be made low-rank: a grouped convolution \(groups = 2\)"):
        to_low_rank(grouped, include=["0"])


def test_factory_from_a_file_and_from_a_module_are_called_with_model_args(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(FACTORY)
    c = config(tmp_path, model=f"{tmp_path / 'my_nets.py'}:build", model_args={"num_classes": 3, "width": 6})
    data = load_run_data(c, "cpu")
    model = build_network(c, data)
    assert model[0].out_channels == 6 and outputs(model, to_float(data.test.images)).shape == (9, 3)
    monkeypatch.chdir(tmp_path)  # a module is imported from the working directory too
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = build_network(c.replace(model="my_nets:build"), data)
    assert model[0].out_channels == 6


def test_warm_start_converts_the_weights_of_a_dense_run(tmp_path):
    dense = config(tmp_path, name="dense-run")
    data = load_run_data(dense, "cpu")
    trained = build_network(dense, data)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not what a fresh model holds
    run_dir = tmp_path / "runs" / "dense-run"
    save_atomic({"model": trained.state_dict(), "step": 7, "config": dense.to_dict()}, run_dir / "checkpoint.pt")
    warm = dense.replace(
        method="lowrank",
        tau=float("inf"),
        rank_energy=1.0,
        lowrank_include=("layer1.*", "layer2.*"),
        init_from=str(run_dir / "checkpoint.pt"),
    )
    notes: list[str] = []
    model = build_network(warm, data, notes=notes)
    x = to_float(data.test.images)
    assert len(dict(low_rank_layers(model))) == 9
    assert (outputs(model, x) - outputs(trained, x)).abs().max() <= 1e-4
    assert any("warm start from step 7 of dense-run" in n for n in notes)


def test_a_warm_start_keeps_the_normalisation_this_run_sets(tmp_path):
    dense = config(tmp_path, name="dense-run")  # normalisation measured on its images
    data = load_run_data(dense, "cpu")
    trained = build_network(dense, data)
    run_dir = tmp_path / "runs" / "dense-run"
    save_atomic({"model": trained.state_dict(), "step": 7, "config": dense.to_dict()}, run_dir / "checkpoint.pt")
    warm = dense.replace(mean=(0.5,), std=(0.25,), init_from=str(run_dir))
    warm_data = load_run_data(warm, "cpu")
    model = build_network(warm, warm_data)
    assert model.rlr_input_mean.flatten().tolist() == [0.5] * 3
    assert model.rlr_input_std.flatten().tolist() == [0.25] * 3
    assert torch.equal(model.conv1.weight, trained.conv1.weight)  # the weights are the run's


# -- settings, resume ------------------------------------------------------------------------------
def test_a_model_string_is_checked_for_form_without_importing_torch(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('dataset = "imagefolder:imgs"\nmodel = "nets/cnn.py:build"\nmethod = "dense"\n')
    code = textwrap.dedent(
        f"""
        import sys
        from rlr_engine.core.presets import load_preset
        from rlr_engine.core.errors import PresetError
        c = load_preset({str(preset)!r})
        assert c.model == {str(tmp_path / "nets" / "cnn.py") + ":build"!r}, c.model  # the preset's folder's
        assert c.dataset == {"imagefolder:" + str(tmp_path / "imgs")!r}, c.dataset
        try:
            load_preset({str(preset)!r}, ["model=cnn.py:"])
        except PresetError as error:
            assert "path/to/file.py:FACTORY" in str(error), error
        else:
            raise AssertionError("accepted")
        assert "torch" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_override_paths_are_the_working_directorys_and_model_keys_are_fixed_on_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = tmp_path / "sub" / "p.toml"
    preset.parent.mkdir()
    preset.write_text('dataset = "tensors:d.pt"\nmodel = "mlp"\nmethod = "dense"\n')
    c = load_preset(str(preset), ["weights=w.pt"])
    assert c.dataset == f"tensors:{tmp_path / 'sub' / 'd.pt'}" and c.weights == str(tmp_path / "w.pt")
    saved = load_preset(str(preset), ["model=torchvision:resnet18", "model_args={num_classes = 10}"])
    with pytest.raises(PresetError, match="model_args cannot change when a run resumes"):
        resume_config(saved, ["model_args={num_classes = 5}"])
    with pytest.raises(PresetError, match="rank_energy cannot change when a run resumes"):
        resume_config(saved, ["rank_energy=0.9"])


# -- bad inputs: one line, nothing created --------------------------------------------------------
BAD = {
    "no such file": (["model=missing.py:build"], "no such file"),
    "no such attribute": (["model=my_nets.py:absent"], "has no 'absent' (it defines build, not_a_model)"),
    "not a module": (["model=my_nets.py:not_a_model"], "the factory returned a str, not a torch.nn.Module"),
    "wrong model_args": (["model=my_nets.py:build", "model_args={depth = 3}"], "do not fit"),
    "weights of another model": (["weights=other.pt"], "do not fit the model: missing from them:"),
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_model_input_is_one_line_exit_2_and_creates_nothing(tmp_path, monkeypatch, capsys, case):
    write_image_folder(tmp_path / "images")
    (tmp_path / "my_nets.py").write_text(FACTORY)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "other.pt")
    preset = tmp_path / "own.toml"
    preset.write_text(
        'dataset = "imagefolder:images"\nmodel = "torchvision:alexnet"\nmodel_args = {num_classes = 3}\n'
        'method = "lowrank"\nepochs = 1\nval_fraction = 0.0\n'
    )
    monkeypatch.chdir(tmp_path)
    overrides, expected = BAD[case]
    args = ["train", str(preset), "--runs", str(tmp_path / "runs")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in " ".join(err.split()), err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_bad_factory_through_the_command_line_is_exit_2_without_traceback_or_run_directory(tmp_path):
    write_image_folder(tmp_path / "images")
    (tmp_path / "nets.py").write_text("import torch\n\ndef build():\n    raise ValueError('no layers given')\n")
    preset = tmp_path / "own.toml"
    preset.write_text('dataset = "imagefolder:images"\nmodel = "nets.py:build"\nmethod = "dense"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "rlr_engine.cli", "train", str(preset), "--runs", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "the factory raised ValueError: no layers given (nets.py, line 4)" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_model_output_that_does_not_fit_the_classes_says_which_model_args_would(tmp_path):
    c = config(tmp_path, model_args={})  # torchvision's default: 1000 classes
    with pytest.raises(ModelError, match=r"returns 2×1000 .* 3 classes.*model_args = \{num_classes = 3\}"):
        build_network(c, load_run_data(c, "cpu"))


def write_idx(raw: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The MNIST file format (big-endian header, then the bytes) that torchvision's MNIST reads."""
    n, h, w = images.shape
    raw.mkdir(parents=True, exist_ok=True)
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, h, w))
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
        (0x801).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.numpy().tobytes()
    )


def test_a_torchvision_data_set_class_is_read_from_data_dir_and_normalisation_measured(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 28, 28), generator=g, dtype=torch.uint8)
    labels = (torch.arange(30) % 10).to(torch.uint8)
    write_idx(tmp_path / "FashionMNIST" / "raw", "train", images[:20], labels[:20])
    write_idx(tmp_path / "FashionMNIST" / "raw", "t10k", images[20:], labels[20:])
    c = RunConfig(
        dataset="torchvision:FashionMNIST",
        model="mlp",
        data_dir=str(tmp_path),
        download=False,
        val_fraction=0.0,
        image_size=16,
    )
    data = load_run_data(c, "cpu")
    assert (len(data.train), len(data.test), data.num_classes, data.channels) == (20, 10, 10, 1)
    assert tuple(data.test.images.shape[1:]) == (1, 16, 16) and torch.equal(data.test.labels, labels[20:].long())
    assert data.normalization_measured and len(data.mean) == 1
    missing = c.replace(dataset="torchvision:KMNIST")
    with pytest.raises(DatasetUnavailable, match=r"'torchvision:KMNIST' is not available in .*download = false"):
        load_run_data(missing, "cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FashionMNIST"]  # nothing left of the attempt


def test_torchvision_weights_offline_name_the_file_to_place_and_leave_no_cache_folders(tmp_path, monkeypatch):
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *args, **kwargs):
        (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)  # as torch.hub does first
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    c = config(tmp_path, weights="torchvision:DEFAULT", weights_skip_mismatched=True)
    with pytest.raises(ModelError) as caught:
        build_network(c, load_run_data(c, "cpu"))
    message = str(caught.value)
    assert "place resnet18-f37072fd.pth there" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not (tmp_path / "torch").exists()
    # The mean and std come from the weights' own transforms (ImageNet's), not measured.
    assert load_run_data(c, "cpu").mean == pytest.approx((0.485, 0.456, 0.406))


BAD_SETTINGS = {
    "model": (["model=resnet18"], "model = 'resnet18'", "torchvision:NAME"),
    "dataset": (["dataset=folder:images"], "dataset = 'folder:images'", "imagefolder:PATH"),
    "rank_energy": (["rank_energy=1.5"], "rank_energy = 1.5", "[0, 1]"),
    "model_args": (["model=mlp", "model_args={width = 3}"], "model_args = {'width': 3}", "not allowed"),
    "include": (["lowrank_include=layer9.*"], "lowrank_include pattern 'layer9.*'", "matches no Linear or Conv2d"),
    "grouped": (["model=torchvision:mobilenet_v2", "lowrank_include=features.1.conv.0.0"], "groups = 32", "exclude it"),
    "init_from": (["init_from=no-such-run"], "init_from '", "no-such-run does not exist"),
    "nothing low-rank": (["lowrank_exclude=['*']"], "method = 'lowrank'", "no layer of model = 'torchvision:resnet18'"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_bad_settings_through_set_are_one_line_exit_2_and_create_nothing(tmp_path, monkeypatch, capsys, case):
    write_image_folder(tmp_path / "images")
    preset = tmp_path / "own.toml"
    preset.write_text(
        'dataset = "imagefolder:images"\nmodel = "torchvision:resnet18"\nmodel_args = {num_classes = 3}\n'
        'method = "lowrank"\nepochs = 1\nval_fraction = 0.0\n'
    )
    monkeypatch.chdir(tmp_path)
    overrides, value, allowed = BAD_SETTINGS[case]
    args = ["train", str(preset), "--runs", str(tmp_path / "runs")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert value in err and allowed in err, err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# -- what the summary and the rank tab show --------------------------------------------------------
def converted_layer_stats():
    from rlr_engine.workload.spectra import layer_stats

    model = to_low_rank(torchvision.models.resnet18(num_classes=3), 0.25, include=["layer4.1.*"])
    return layer_stats(model)


@pytest.mark.slow
def test_the_summary_lists_every_converted_layer_with_its_dense_shape(monkeypatch):
    import io

    from rich.console import Console

    from rlr_engine.cli import console
    from rlr_engine.control.records import Snapshot

    out = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=out, width=120, no_color=True))
    console.print_summary(Snapshot(state="finished", preset="own", layers=converted_layer_stats()))
    rows = {line.split("│")[1].strip(): line for line in out.getvalue().splitlines() if line.count("│") > 3}
    assert "2 of 21 factorised" in " ".join(out.getvalue().split())
    assert "512×4608" in rows["layer4.1.conv1"] and "128/512" in rows["layer4.1.conv1"]
    assert "64×147" in rows["conv1"] and "dense" in rows["conv1"]  # a 7×7 convolution as a matrix


@pytest.mark.slow
async def test_the_rank_tab_lists_every_converted_layer_with_its_dense_shape():
    from textual.app import App

    from rlr_engine.control.records import Snapshot
    from rlr_tui.widgets.rank_bars import RankBars

    class BarsApp(App):
        def compose(self):
            yield RankBars()

    app = BarsApp()
    async with app.run_test(size=(100, 40)) as pilot:
        bars = app.query_one(RankBars)
        bars.show(Snapshot(state="running", preset="own", layers=converted_layer_stats()))
        await pilot.pause()
        screen = app.export_screenshot()
    assert ("layer4.1.conv1", 128, 512) in bars.rows and len(bars.rows) == 21
    assert "512×4608" in screen and "64×147" in screen


def test_a_new_classifier_head_is_left_as_initialised_only_when_asked(tmp_path):
    imagenet = torchvision.models.resnet18()  # a 1000-class head, as torchvision's weights have
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pt")
    c = config(tmp_path, weights=str(tmp_path / "imagenet.pt"), mean=[0.5], std=[0.25])
    data = load_run_data(c, "cpu")
    with pytest.raises(ModelError, match=r"shapes differ: fc.weight 3×512 in the model, 1000×512 in the weights"):
        build_network(c, data)
    notes: list[str] = []
    model = build_network(c.replace(weights_skip_mismatched=True), data, notes=notes)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert any("left as initialised (shapes differ): fc.weight, fc.bias" in n for n in notes), notes


def test_unknown_torchvision_weights_list_each_name_once():
    from rlr_engine.workload.model_sources import torchvision_weights_entry

    with pytest.raises(ModelError) as caught:
        torchvision_weights_entry("resnet18", "NOPE", "weights = 'torchvision:NOPE'")
    assert str(caught.value).endswith("(it has DEFAULT, IMAGENET1K_V1)"), str(caught.value)
