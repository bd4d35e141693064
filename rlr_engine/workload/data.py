"""Data sets held on the training device as uint8 tensors; batches are index gathers.

The MNIST family, CIFAR and SVHN come through torchvision (download is the normal online path);
the 8×8 digits come from scikit-learn and are always available offline; ``synthetic*`` sets are
generated for tests and demos.
"""

from __future__ import annotations

import gzip
import inspect
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlr_engine.core.catalog import DATASETS, OFFLINE_HINT, DatasetInfo, data_source
from rlr_engine.core.errors import DatasetUnavailable  # re-exported: callers catch it from here

DEFAULT_DATA_DIR = "data"


@dataclass(frozen=True)
class Split:
    images: Tensor  # uint8, (N, C, H, W)
    labels: Tensor  # int64, (N,)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class ImageData:
    """Train / validation / test splits plus the data set's facts (``catalog.DatasetInfo``:
    classes, normalisation, augmentation), read from there rather than copied.
    ``normalization_measured``: the mean and std were measured on the training split (data
    sets rlr does not know, when the settings give none)."""

    name: str
    train: Split
    val: Split
    test: Split
    info: DatasetInfo
    normalization_measured: bool = False

    @property
    def num_classes(self) -> int:
        return self.info.classes

    @property
    def mean(self) -> tuple[float, ...] | None:
        return self.info.mean

    @property
    def std(self) -> tuple[float, ...] | None:
        return self.info.std

    @property
    def crop_padding(self) -> int:
        return self.info.crop_padding

    @property
    def flip(self) -> bool:
        return self.info.flip

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


def to_float(images: Tensor) -> Tensor:
    """uint8 pixels → float32 in [0, 1], contiguous (attacks need plain float32 inputs)."""
    return images.float().div_(255.0)


def augment(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding and random horizontal flip, per sample, on the device."""
    if padding:
        n, c, h, w = images.shape
        padded = F.pad(images, (padding,) * 4)
        dev = images.device
        oy = torch.randint(0, 2 * padding + 1, (n, 1), device=dev, generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (n, 1), device=dev, generator=generator)
        rows = (oy + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
        padded = padded.gather(2, rows)
        cols = (ox + torch.arange(w, device=dev)).view(n, 1, 1, w).expand(n, c, h, w)
        images = padded.gather(3, cols)
    if flip:
        mask = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
        images = torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
    return images


def hold_out(images: Tensor, labels: Tensor, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Seeded random split of the training set into train and validation parts."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * len(labels))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx])


def _digits(seed: int) -> tuple[Split, Split]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(10_000 + seed))
    n_test = len(labels) // 5
    test, train = order[:n_test], order[n_test:]
    return Split(images[train], labels[train]), Split(images[test], labels[test])


def _synthetic(info: DatasetInfo, seed: int, samples: int = 2000) -> tuple[Split, Split]:
    """Class prototypes plus Gaussian noise: learnable, deterministic, any shape."""
    channels, size, classes = info.channels, info.image_size, info.classes
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(classes, channels, size, size, generator=g) * 0.6 + 0.2
    labels = torch.randint(0, classes, (samples,), generator=g)
    noisy = prototypes[labels] + 0.15 * torch.randn(samples, channels, size, size, generator=g)
    images = (noisy.clamp(0, 1) * 255).round().to(torch.uint8)
    n_test = samples // 5
    return Split(images[n_test:], labels[n_test:]), Split(images[:n_test], labels[:n_test])


MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _stage_system_copy(info: DatasetInfo, root: Path) -> None:
    """torchvision reads <Class>/raw/*-ubyte under root; a system package (Debian's
    dataset-fashion-mnist) ships them gzipped in ``info.system_copy``. Decompress them there
    once if they are missing."""
    raw = root / info.source / "raw"
    source_dir = info.system_copy
    if source_dir is None or all((raw / n).exists() for n in MNIST_RAW_FILES) or not source_dir.is_dir():
        return
    sources = [source_dir / f"{n}.gz" for n in MNIST_RAW_FILES]
    if not all(s.exists() for s in sources):
        return
    raw.mkdir(parents=True, exist_ok=True)
    for name, source in zip(MNIST_RAW_FILES, sources):
        tmp = raw / f".{name}.tmp"
        with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(raw / name)


def as_split(dataset, channels: int) -> Split:
    """A torchvision data set's arrays as a uint8 N×C×H×W Split. torchvision keeps the MNIST
    family as N×H×W tensors with ``targets``, CIFAR as N×H×W×C arrays with a list of
    ``targets``, SVHN as N×C×H×W arrays with ``labels``."""
    images = torch.as_tensor(dataset.data)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.shape[1] != channels:
        images = images.permute(0, 3, 1, 2).contiguous()
    labels = dataset.targets if hasattr(dataset, "targets") else dataset.labels
    return Split(images.to(torch.uint8), torch.as_tensor(np.asarray(labels), dtype=torch.int64))


def _torchvision(info: DatasetInfo, root: Path, download: bool) -> tuple[Split, Split]:
    """Train and test splits through the torchvision class named by ``info.source``."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, info.source)
    by_split = "split" in inspect.signature(cls).parameters  # SVHN: split="train"/"test"

    def fetch(train: bool) -> Split:
        which = {"split": "train" if train else "test"} if by_split else {"train": train}
        return as_split(cls(str(root), download=download, **which), info.channels)

    return fetch(True), fetch(False)


def _unavailable(info: DatasetInfo, root: Path, download: bool, reason: BaseException) -> DatasetUnavailable:
    how = "The download failed (no internet?). " if download else "Downloading is switched off (download = false). "
    extra = ""
    if info.system_copy is not None:
        extra = (
            f" On Debian/Ubuntu `apt-get install {info.system_package}` provides it offline "
            f"(looked in {info.system_copy})."
        )
    return DatasetUnavailable(
        f"data set {info.name!r} is not available in {root.resolve()}: {reason}. {how}"
        f"Run once with internet and download = true, or copy the torchvision files into that "
        f"directory (set data_dir to use another).{extra} {OFFLINE_HINT}"
    )


def directories(root: Path) -> set[Path]:
    return {root, *(p for p in root.rglob("*") if p.is_dir())} if root.is_dir() else set()


def remove_empty_directories_since(root: Path, before: set[Path]) -> None:
    """A failed download leaves torchvision's empty folders (data/MNIST/raw): remove those it
    made, deepest first; never a file, never a folder that was there before."""
    for path in sorted(directories(root) - before, key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()  # only succeeds on an empty directory
        except OSError:
            pass


def check_data_dir(name: str, data_dir: str | Path) -> None:
    """A data set read from files in data_dir needs that directory to exist (an image folder or a
    tensor file is read from its own path, not from data_dir). Only the default ``data``
    (relative to the working directory) is created by rlr; any other path is the user's own
    choice, and a missing one is most likely mistyped, so it is an error that names it."""
    source = data_source(name)
    if source is not None and not source.reads_data_dir:
        return
    root = Path(data_dir).expanduser()
    if root.is_dir():
        return
    if root.exists():
        raise DatasetUnavailable(f"data set {name!r}: data_dir = {str(data_dir)!r} is not a directory")
    if str(data_dir) != DEFAULT_DATA_DIR:
        raise DatasetUnavailable(
            f"data set {name!r}: data_dir = {str(data_dir)!r} does not exist; nothing was created. "
            f"Create it first (mkdir -p {data_dir}) or leave data_dir unset to use ./{DEFAULT_DATA_DIR}. "
            f"{OFFLINE_HINT}"
        )


def load_dataset(
    name: str,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    download: bool = True,
    val_fraction: float = 0.25,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ImageData:
    """Load a data set, hold out ``val_fraction`` of its training set (seeded) for validation,
    and place all splits on ``device`` as uint8. Facts about each set (shape, classes,
    normalisation, augmentation) come from ``catalog.DATASETS``."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    info = DATASETS[name]
    check_data_dir(name, data_dir)
    root = Path(data_dir).expanduser()
    if info.source == "sklearn":
        train, test = _digits(seed)
    elif info.source == "synthetic":
        train, test = _synthetic(info, seed)
    else:
        try:
            _stage_system_copy(info, root)
        except OSError:
            pass  # fall through to torchvision, which reports what is missing
        before = directories(root)
        try:
            train, test = _torchvision(info, root, download)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
            remove_empty_directories_since(root, before)
            raise _unavailable(info, root, download, error) from None
    train, val = hold_out(train.images, train.labels, val_fraction, seed)
    return ImageData(name, train.to(device), val.to(device), test.to(device), info)
