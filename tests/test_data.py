import dataclasses
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from rlr_engine.core.catalog import DATASETS
from rlr_engine.workload.data import DatasetUnavailable, augment, load_dataset


def write_idx(path, array: np.ndarray) -> None:
    """The IDX format of the MNIST family: magic (0, 0, type 0x08 = ubyte, ndim), big-endian
    int32 sizes, then the raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist_arrays(n_train=80, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n_train, 28, 28)),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 28, 28)),
        rng.integers(0, 10, n_test),
    )


def system_copy_in(monkeypatch, directory) -> None:
    """Fashion-MNIST's system package is looked for in ``directory`` instead of /usr/share."""
    monkeypatch.setitem(
        DATASETS, "fashion-mnist", dataclasses.replace(DATASETS["fashion-mnist"], system_copy=directory)
    )


def test_mnist_loads_from_idx_files_where_torchvision_keeps_them(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    xtr, ytr, xte, yte = fake_mnist_arrays()
    write_idx(raw / "train-images-idx3-ubyte", xtr)
    write_idx(raw / "train-labels-idx1-ubyte", ytr)
    write_idx(raw / "t10k-images-idx3-ubyte", xte)
    write_idx(raw / "t10k-labels-idx1-ubyte", yte)
    data = load_dataset("mnist", tmp_path, download=False, val_fraction=0.25, seed=3)
    assert data.train.images.shape == (60, 1, 28, 28) and data.val.images.shape == (20, 1, 28, 28)
    assert data.train.images.dtype == torch.uint8
    torch.testing.assert_close(data.test.images[:, 0], torch.from_numpy(xte.astype(np.uint8)))
    torch.testing.assert_close(data.test.labels, torch.from_numpy(yte.astype(np.int64)))
    # train ∪ val is the training set, split without overlap
    merged = torch.cat([data.train.images, data.val.images]).flatten(1)
    original = torch.from_numpy(xtr.astype(np.uint8)).flatten(1)
    assert sorted(map(bytes, merged.numpy())) == sorted(map(bytes, original.numpy()))
    assert data.mean is None and data.crop_padding == 0  # MNIST: no normalisation, no augmentation


def test_fashion_mnist_is_found_where_debian_installs_it(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    xtr, ytr, xte, yte = fake_mnist_arrays(40, 10, seed=1)
    for name, array in (
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ):
        write_idx(tmp_path / name, array)
        with open(tmp_path / name, "rb") as src, gzip.open(debian / f"{name}.gz", "wb") as dst:
            dst.write(src.read())
    system_copy_in(monkeypatch, debian)
    (tmp_path / "data").mkdir()
    data = load_dataset("fashion-mnist", tmp_path / "data", download=False, val_fraction=0.0)
    assert len(data.train) == 40 and len(data.test) == 10
    torch.testing.assert_close(data.test.labels, torch.from_numpy(yte.astype(np.int64)))


def test_cifar10_loads_from_pickled_batches(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        images = rng.integers(0, 256, (8, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 8).tolist()
        batches[name] = (images, labels)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": images, "labels": labels}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    # torchvision verifies the official files' MD5 sums; these hand-written files cannot match.
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: True)
    data = load_dataset("cifar10", tmp_path, download=False, val_fraction=0.25)
    assert data.train.images.shape == (30, 3, 32, 32) and data.test.images.shape == (8, 3, 32, 32)
    expected = torch.from_numpy(batches["test_batch"][0].reshape(8, 3, 32, 32))
    torch.testing.assert_close(data.test.images, expected)
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.crop_padding == 4 and data.flip


def test_svhn_loads_from_its_mat_files_with_digit_zero_as_class_zero(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets as tvd

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("test", 5)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN's own H×W×C×N layout
        y = rng.integers(1, 11, (n, 1))  # labels 1…10, 10 standing for the digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        arrays[split] = (x, y)
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)  # not the official files
    data = load_dataset("svhn", tmp_path, download=False, val_fraction=0.25)
    assert data.train.images.shape == (9, 3, 32, 32) and data.test.images.shape == (5, 3, 32, 32)
    x, y = arrays["test"]
    torch.testing.assert_close(data.test.images, torch.from_numpy(np.transpose(x, (3, 2, 0, 1)).copy()))
    torch.testing.assert_close(data.test.labels, torch.from_numpy(y[:, 0] % 10))
    assert data.crop_padding == 4 and not data.flip


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "fashion-mnist"])
def test_missing_data_set_says_where_it_looked_and_what_works_offline(tmp_path, monkeypatch, name):
    system_copy_in(monkeypatch, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset(name, tmp_path / "empty", download=False)
    message = str(info.value)
    assert repr(name) in message and str(tmp_path / "empty") in message
    assert "quickstart" in message and "download" in message


def test_digits_are_always_available_and_split_reproducibly():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert torch.equal(a.val.images, b.val.images)
    assert a.train.images.max() == 255 and a.image_size == 8 and a.channels == 1


def test_unknown_data_set_is_rejected():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


def test_augmentation_crops_and_flips_each_image_independently():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4).repeat(50, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    flipped = augment(images, padding=0, flip=True, generator=g)
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    cropped = augment(images, padding=1, flip=False, generator=g)
    assert cropped.shape == images.shape
    # every crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(10):
        windows = [padded[i, :, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(cropped[i], w) for w in windows)
    assert len({bytes(c.numpy()) for c in cropped[::2]}) > 1


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_a_mistyped_data_dir_is_an_error_naming_it_and_creates_nothing(tmp_path, monkeypatch, name):
    system_copy_in(monkeypatch, tmp_path / "nowhere")
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset(name, missing, download=True)
    message = str(info.value)
    assert f"data_dir = {str(missing)!r} does not exist" in message and "mkdir -p" in message
    assert not (tmp_path / "no").exists()


def test_in_memory_data_sets_ignore_data_dir(tmp_path):
    data = load_dataset("synthetic", tmp_path / "never-made", val_fraction=0.25)
    assert len(data.train) > 0 and not (tmp_path / "never-made").exists()


def test_a_failed_download_leaves_no_empty_folders_behind_and_keeps_what_was_there(tmp_path, monkeypatch):
    from rlr_engine.workload import data as data

    (tmp_path / "CIFAR10").mkdir()
    (tmp_path / "CIFAR10" / "notes.txt").write_text("mine")

    def offline(info, root, download):  # what torchvision does without internet
        (root / "MNIST" / "raw").mkdir(parents=True)
        (root / "CIFAR10" / "part").mkdir()
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(data, "_torchvision", offline)
    with pytest.raises(data.DatasetUnavailable, match="not available"):
        data.load_dataset("mnist", tmp_path, download=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["CIFAR10", "CIFAR10/notes.txt"]


def test_the_nproc_launcher_does_not_ask_for_a_data_dir_that_files_named_by_path_never_read(tmp_path):
    from rlr_engine.cli.data_parallel import _check_start
    from rlr_engine.core.config import validate

    missing = str(tmp_path / "never-made")
    for dataset in (f"imagefolder:{tmp_path}", f"tensors:{tmp_path / 'data.pt'}"):
        _check_start(validate({"dataset": dataset, "model": "mlp", "data_dir": missing, "device": "cpu"}), 2)
    with pytest.raises(DatasetUnavailable, match="does not exist"):  # a data set that is read from data_dir
        _check_start(
            validate({"dataset": "torchvision:MNIST", "model": "mlp", "data_dir": missing, "device": "cpu"}), 2
        )
    assert not (tmp_path / "never-made").exists()
