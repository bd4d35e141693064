"""Any data set a run names, held on the device as uint8 like rlr's own (data.py): the data sets
rlr knows, an image folder (torchvision's ImageFolder), a tensor file, or any torchvision data
set class.

Images are read once, resized once when ``image_size`` asks (shorter side, then a centre crop),
and kept as uint8 N×C×H×W, so batches stay index gathers and ε stays in [0, 1] pixel units.
Data sets rlr does not know get the mean and std the model normalises with from the settings,
or measured once on the training split.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlr_engine.core.catalog import TORCHVISION, DatasetInfo, data_source
from rlr_engine.core.errors import DataError, DatasetUnavailable, first_line
from rlr_engine.workload.data import (
    DEFAULT_DATA_DIR,
    ImageData,
    Split,
    as_split,
    check_data_dir,
    directories,
    hold_out,
    load_dataset,
    remove_empty_directories_since,
)

RESIZE_CHUNK = 512  # images resized at a time (bounds the float copy a resize makes)
TENSOR_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_data(
    dataset: str,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    download: bool = True,
    val_fraction: float = 0.25,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    image_size: int = 0,
    test_fraction: float = 0.2,
    dataset_args: Mapping[str, Any] | None = None,
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
) -> ImageData:
    """Load ``dataset`` (a name of catalog.DATASETS or one of the forms of catalog.data_source),
    hold out ``val_fraction`` of its training split (seeded), resize to ``image_size`` (0: as
    they are) and place every split on ``device`` as uint8.

    ``mean``/``std`` (per channel, or one value for all): the normalisation the model applies;
    empty: the data set's own (catalog), or measured on the training split. ``test_fraction``:
    an image folder without train/ and test/ folders holds out that share of its images (seeded)
    for testing. ``dataset_args``: extra keyword arguments of a torchvision data set class.

    DataError when files the settings name cannot be used; DatasetUnavailable when a data set
    cannot be found or downloaded."""
    source = data_source(dataset)
    if source is None:
        raise ValueError(f"unknown data set {dataset!r}")
    if source.in_catalog:
        data = load_dataset(dataset, data_dir, download, val_fraction, seed, "cpu")
        info, splits = data.info, [data.train, data.val, data.test]
    else:
        if source.kind == "imagefolder":
            train, test, classes = _image_folder(dataset, Path(source.target), image_size, test_fraction, seed)
        elif source.kind == "tensors":
            train, test, classes = _tensor_file(dataset, Path(source.target))
        else:
            train, test, classes = _torchvision_class(source.target, data_dir, download, image_size, dataset_args or {})
        train, val = hold_out(train.images, train.labels, val_fraction, seed)
        splits = [train, val, test]
        info = DatasetInfo(dataset, train.images.shape[1], train.images.shape[-1], classes, source.kind)
    if image_size and splits[0].images.shape[-1] != image_size:
        splits = [Split(resize(s.images, image_size), s.labels) for s in splits]
    info = replace(info, image_size=splits[0].images.shape[-1])
    measured = not mean and not source.in_catalog
    if measured:
        mean, std = measure_normalization(splits[0].images)
    if mean:
        info = replace(
            info,
            mean=_per_channel(dataset, "mean", mean, info.channels),
            std=_per_channel(dataset, "std", std, info.channels),
        )
    train, val, test = (s.to(device) for s in splits)
    return ImageData(dataset, train, val, test, info, normalization_measured=measured)


def _per_channel(dataset: str, key: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise DataError(
            f"{key} = {list(values)} has {len(values)} values but the images of {dataset!r} have {channels} "
            f"channel{'s' if channels > 1 else ''}: give one value per channel (or one for all)"
        )
    return tuple(float(v) for v in values)


@torch.no_grad()
def measure_normalization(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (population) of uint8 images as [0, 1] pixels,
    summed in float64 a chunk at a time."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    n = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


@torch.no_grad()
def resize(images: Tensor, size: int) -> Tensor:
    """uint8 N×C×H×W images resized so the shorter side is ``size`` (antialiased), then cropped
    to size×size around the centre (torchvision's Resize + CenterCrop)."""
    from torchvision.transforms.v2 import functional as TF

    out = [
        TF.center_crop(TF.resize(images[i : i + RESIZE_CHUNK], size, antialias=True), [size, size])
        for i in range(0, len(images), RESIZE_CHUNK)
    ]
    return torch.cat(out) if out else images.new_empty((0, images.shape[1], size, size))


# -- an image folder -----------------------------------------------------------------------------
def _image_folder(
    dataset: str, root: Path, image_size: int, test_fraction: float, seed: int
) -> tuple[Split, Split, int]:
    """PATH/train and PATH/test, or PATH split by ``test_fraction`` (seeded): each a folder per
    class, read by torchvision's ImageFolder (RGB), resized as they are read."""
    if not root.is_dir():
        raise DataError(f"dataset = {dataset!r}: {root} is not a directory (one folder per class, or train/ and test/)")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        present, absent = (train_dir, test_dir) if train_dir.is_dir() else (test_dir, train_dir)
        raise DataError(f"dataset = {dataset!r}: {present} exists but {absent} does not; give both, or neither")
    if train_dir.is_dir():
        train_set, test_set = _folder(dataset, train_dir), _folder(dataset, test_dir)
        if train_set.classes != test_set.classes:
            only = sorted(set(train_set.classes) ^ set(test_set.classes))
            raise DataError(
                f"dataset = {dataset!r}: train/ and test/ have different class folders (in one only: "
                f"{', '.join(only[:8]) or 'the same names in another order'})"
            )
        splits = _read_folder(dataset, train_set, image_size), _read_folder(dataset, test_set, image_size)
        if splits[0].images.shape[1:] != splits[1].images.shape[1:]:
            shapes = ["×".join(map(str, split.images.shape[1:])) for split in splits]
            raise DataError(
                f"dataset = {dataset!r}: train/ images are {shapes[0]}, test/ images {shapes[1]}; set image_size to "
                f"resize them as they load"
            )
        return splits[0], splits[1], len(train_set.classes)
    whole = _folder(dataset, root)
    images = _read_folder(dataset, whole, image_size)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(10_000 + seed))
    n_test = max(1, round(test_fraction * len(images)))
    if n_test >= len(images):
        raise DataError(f"dataset = {dataset!r}: {len(images)} images are too few to hold out a test split")
    test, train = order[:n_test], order[n_test:]
    return (
        Split(images.images[train], images.labels[train]),
        Split(images.images[test], images.labels[test]),
        len(whole.classes),
    )


def _folder(dataset: str, path: Path):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, OSError) as error:  # no class folder, or no image in them
        raise DataError(f"dataset = {dataset!r}: {first_line(error)}") from None


def _read_folder(dataset: str, folder, image_size: int) -> Split:
    """Every image of an ImageFolder as uint8, resized once when ``image_size`` is set."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    images, first = [], None
    for path, _ in folder.samples:
        try:
            with Image.open(path) as image:
                picture = image.convert("RGB")
        except OSError as error:
            raise DataError(f"dataset = {dataset!r}: {path} cannot be read as an image: {first_line(error)}") from None
        tensor = TF.pil_to_tensor(picture)
        if image_size:
            tensor = TF.center_crop(TF.resize(tensor, image_size, antialias=True), [image_size, image_size])
        elif first is None:
            first = (path, tuple(tensor.shape[1:]))
        elif tuple(tensor.shape[1:]) != first[1]:
            raise DataError(
                f"dataset = {dataset!r}: images differ in size ({first[1][0]}×{first[1][1]} {first[0]}, "
                f"{tensor.shape[1]}×{tensor.shape[2]} {path}); set image_size to resize them as they load"
            )
        images.append(tensor)
    labels = torch.tensor(folder.targets, dtype=torch.int64)
    return Split(torch.stack(images).to(torch.uint8), labels)


# -- a tensor file -------------------------------------------------------------------------------
def _tensor_file(dataset: str, path: Path) -> tuple[Split, Split, int]:
    """x_train, y_train, x_test, y_test from a torch.save'd dict: images N×C×H×W (or N×H×W) in
    [0, 1] (float) or 0..255 (uint8), labels integers. Float images are stored as 8-bit pixels,
    like every other data set (round(255·x))."""
    if not path.is_file():
        raise DataError(f"dataset = {dataset!r}: no such file {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, pickled objects beyond tensors, truncated
        raise DataError(f"dataset = {dataset!r}: {path} cannot be read by torch.load: {first_line(error)}") from None
    if not isinstance(payload, dict) or any(k not in payload for k in TENSOR_KEYS):
        have = ", ".join(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise DataError(
            f"dataset = {dataset!r}: {path} must hold a dict with {', '.join(TENSOR_KEYS)} (it holds {have})"
        )
    train = _tensor_split(dataset, payload["x_train"], payload["y_train"], "train")
    test = _tensor_split(dataset, payload["x_test"], payload["y_test"], "test")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"dataset = {dataset!r}: x_train images are {tuple(train.images.shape[1:])}, x_test images "
            f"{tuple(test.images.shape[1:])}; they must be alike"
        )
    return train, test, int(max(train.labels.max(), test.labels.max())) + 1


def _tensor_split(dataset: str, x: Any, y: Any, split: str) -> Split:
    if not isinstance(x, Tensor) or x.ndim not in (3, 4) or not isinstance(y, Tensor) or y.ndim != 1:
        raise DataError(
            f"dataset = {dataset!r}: x_{split} must be a tensor N×C×H×W (or N×H×W) and y_{split} a tensor of N labels"
        )
    if len(x) != len(y) or len(y) == 0:
        raise DataError(f"dataset = {dataset!r}: x_{split} has {len(x)} images and y_{split} {len(y)} labels")
    if y.dtype.is_floating_point or y.dtype == torch.bool or int(y.min()) < 0:
        raise DataError(f"dataset = {dataset!r}: y_{split} must hold class numbers 0, 1, … (integers)")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.dtype == torch.uint8:
        images = x
    elif x.dtype.is_floating_point:
        low, high = float(x.min()), float(x.max())  # nan when any pixel is
        if not (low >= 0 and high <= 1):
            raise DataError(
                f"dataset = {dataset!r}: x_{split} holds values in [{low:g}, {high:g}]; images must be in [0, 1] "
                f"(ε is measured in those pixel units; the model normalises them itself)"
            )
        images = x.mul(255).round_().to(torch.uint8)
    else:
        raise DataError(f"dataset = {dataset!r}: x_{split} must be float in [0, 1] or uint8, not {x.dtype}")
    return Split(images.contiguous(), y.to(torch.int64))


# -- a torchvision data set class ----------------------------------------------------------------
def _torchvision_class(
    name: str, data_dir: str | Path, download: bool, image_size: int, extra: Mapping[str, Any]
) -> tuple[Split, Split, int]:
    """Train and test splits of ``torchvision.datasets.<name>``, called as its documentation
    says: (root, train=True/False or split="train"/"test", download=…, **extra). Classes that
    hold their images as one uint8 array (the MNIST family, CIFAR, SVHN, STL10) are taken as
    they are; any other is read image by image."""
    import torchvision.datasets as tvd

    label = f"{TORCHVISION}:{name}"
    found = getattr(tvd, name, None)
    if not (isinstance(found, type) and issubclass(found, torch.utils.data.Dataset)):
        raise DataError(f"dataset = {label!r}: torchvision.datasets has no data set class {name!r}")
    cls: Any = found  # a class of its own signature, called as its documentation says
    params = inspect.signature(cls).parameters
    reserved = {"root", "download", "transform", "target_transform", "train" if "train" in params else "split"}
    taken = sorted(reserved & set(extra))
    if taken:
        raise DataError(
            f"dataset_args = {dict(extra)}: {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} set by rlr "
            f"(from data_dir, download and the split it reads)"
        )
    if "train" not in params and "split" not in params:
        raise DataError(
            f"dataset = {label!r}: the class takes neither train= nor split=, so rlr cannot ask it for a test split"
        )

    def which(train: bool) -> dict[str, Any]:
        if "train" in params:
            return {"train": train}
        return {"split": "train" if train else "test"}

    check_data_dir(label, data_dir)
    root = Path(data_dir).expanduser()
    before = directories(root)
    args = {"download": download} if "download" in params else {}
    try:
        train_set = cls(str(root), **which(True), **args, **extra)
        test_set = cls(str(root), **which(False), **args, **extra)
    except TypeError as error:
        raise DataError(f"dataset_args = {dict(extra)} do not fit {label}: {first_line(error)}") from None
    except Exception as error:  # not downloaded (RuntimeError), no internet (URLError, OSError), …
        remove_empty_directories_since(root, before)
        how = "the download failed (no internet?)" if download else "downloading is switched off (download = false)"
        raise DatasetUnavailable(
            f"data set {label!r} is not available in {root.resolve()}: {first_line(error)}; {how}. Run once with "
            f"internet and download = true, or put torchvision's files there (data_dir sets the folder)"
        ) from None
    train, test = _torchvision_split(train_set, image_size), _torchvision_split(test_set, image_size)
    classes = len(getattr(train_set, "classes", ()) or ()) or int(max(train.labels.max(), test.labels.max())) + 1
    return train, test, classes


def _torchvision_split(dataset, image_size: int) -> Split:
    data = getattr(dataset, "data", None)
    labels = getattr(dataset, "targets", getattr(dataset, "labels", None))
    array = torch.as_tensor(data) if data is not None and hasattr(data, "shape") else None
    if array is not None and labels is not None and array.dtype == torch.uint8 and array.ndim in (3, 4):
        channels = 1 if array.ndim == 3 else (array.shape[1] if array.shape[1] in (1, 3) else array.shape[-1])
        return as_split(dataset, channels)
    from torchvision.transforms.v2 import functional as TF

    images, targets, mode = [], [], None
    dataset.transform = dataset.target_transform = None
    for i in range(len(dataset)):
        picture, target = dataset[i]
        mode = mode or ("L" if picture.mode in ("L", "1") else "RGB")
        tensor = TF.pil_to_tensor(picture.convert(mode))
        if image_size:
            tensor = TF.center_crop(TF.resize(tensor, image_size, antialias=True), [image_size, image_size])
        images.append(tensor)
        targets.append(int(target))
    try:
        stacked = torch.stack(images)
    except RuntimeError:
        raise DataError(
            f"the images of {type(dataset).__name__} differ in size; set image_size to resize them"
        ) from None
    return Split(stacked, torch.tensor(targets, dtype=torch.int64))
