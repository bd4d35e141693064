"""What rlr knows about each data set, what each model needs as input and what each attack is:
the single source of these facts for loading data, validating presets and commands, and judging
attack results. Also the forms of the other sources a run may name — a torchvision model or a
factory of the user's, weights, an image folder, a tensor file, a torchvision data set — checked
here for their form only (the workload tier imports and builds them).

Plain Python only (no torch), so a dashboard or a preset check can use it without loading the
training stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Names the engine accepts beside those of the data sets, models and attacks below.
STEP_SCALINGS = ("reference", "alpha", "none")
ADAPTIVE_METHODS = ("robust-dlrt", "condlr-adaptive")
METHODS = ("dense", "lowrank", *ADAPTIVE_METHODS)
CORE_OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")  # presets also take cuda:N
# float32: everything in float32. bf16: forward and backward under autocast to bfloat16; the
# factors, momentum, retraction and core projection stay float32.
PRECISIONS = ("float32", "bf16")
# Capturing the whole training step as a CUDA graph: on, off, or auto (on where CUDA runs it).
CUDA_GRAPHS = ("auto", "on", "off")
# How a low-rank layer computes its output: factored (through the rank-r intermediate) or composed
# (W = U S Vᵀ formed, then one dense kernel); a run's "auto" picks per layer by timing.
LOW_RANK_FORWARDS = ("factored", "composed")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
OFFLINE_HINT = (
    "Presets that work offline: quickstart (scikit-learn digits), and the fashion-mnist "
    "presets once Debian's dataset-fashion-mnist package is installed "
    "(apt-get install dataset-fashion-mnist)."
)


@dataclass(frozen=True)
class DatasetInfo:
    """One data set: image shape, classes, the normalisation the model applies to [0, 1]
    pixels (None: none), training augmentation (random crop after zero padding, horizontal
    flip), where it comes from, and ``large_eps``, an L∞ budget at which any model should be
    near chance (None where no such budget is established).

    ``source`` is "sklearn" (in memory), "synthetic" (generated) or the name of the
    torchvision.datasets class that reads it from data_dir (and downloads it there);
    ``system_copy`` is the directory where the system package ``system_package`` installs the
    gzipped raw files, used offline when data_dir lacks them."""

    name: str
    channels: int
    image_size: int
    classes: int
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_padding: int = 0
    flip: bool = False
    large_eps: float | None = None
    system_copy: Path | None = None
    system_package: str = ""

    @property
    def needs_files(self) -> bool:
        """True when the data live in files under data_dir (downloaded or copied there)."""
        return self.source not in IN_MEMORY_SOURCES


IN_MEMORY_SOURCES = ("sklearn", "synthetic")

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("digits", 1, 8, 10, "sklearn", large_eps=0.3),
        DatasetInfo("mnist", 1, 28, 10, "MNIST", large_eps=0.3),
        DatasetInfo(
            "fashion-mnist",
            1,
            28,
            10,
            "FashionMNIST",
            large_eps=0.3,
            system_copy=DEBIAN_FASHION_MNIST,
            system_package="dataset-fashion-mnist",
        ),
        DatasetInfo(
            "cifar10",
            3,
            32,
            10,
            "CIFAR10",
            (0.4914, 0.4822, 0.4465),
            (0.2023, 0.1994, 0.2010),
            crop_padding=4,
            flip=True,
        ),
        DatasetInfo(
            "cifar100",
            3,
            32,
            100,
            "CIFAR100",
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            crop_padding=4,
            flip=True,
        ),
        DatasetInfo("svhn", 3, 32, 10, "SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), crop_padding=4),
        DatasetInfo("synthetic", 1, 8, 10, "synthetic"),
        DatasetInfo("synthetic-28", 1, 28, 10, "synthetic"),
        DatasetInfo("synthetic-32", 3, 32, 10, "synthetic"),
    )
}


@dataclass(frozen=True)
class ModelInput:
    """The images a model accepts: a minimum side length and, when it is fixed, the exact one."""

    min_size: int = 1
    exact_size: int | None = None

    def problem(self, data: DatasetInfo) -> str | None:
        """Why this model cannot take ``data``'s images, or None when it can."""
        if self.exact_size is not None and data.image_size != self.exact_size:
            return f"needs {self.exact_size}×{self.exact_size} images"
        if data.image_size < self.min_size:
            return f"needs images of at least {self.min_size}×{self.min_size} pixels"
        return None


MODEL_INPUTS: dict[str, ModelInput] = {
    "lenet5": ModelInput(min_size=16),
    "vgg16": ModelInput(exact_size=32),
    "wrn16-4": ModelInput(min_size=8),
    "digits-cnn": ModelInput(min_size=2),
    "mlp": ModelInput(),
}


def model_data_problem(model: str, dataset: str) -> str | None:
    """A sentence saying why ``model`` cannot train on ``dataset`` (None when it can, or when
    either is not rlr's own: their shapes are known once the data are loaded)."""
    if model not in MODEL_INPUTS or dataset not in DATASETS:
        return None
    problem = MODEL_INPUTS[model].problem(DATASETS[dataset])
    if problem is None:
        return None
    info = DATASETS[dataset]
    fitting = [d.name for d in DATASETS.values() if MODEL_INPUTS[model].problem(d) is None]
    return (
        f"model {model!r} {problem}; data set {dataset!r} has {info.image_size}×{info.image_size} "
        f"(data sets that fit: {', '.join(fitting)})"
    )


# -- models and data from elsewhere ------------------------------------------------------------
TORCHVISION = "torchvision"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class ModelSource:
    """Where a ``model`` comes from: ``kind`` "builtin" (a name of MODEL_INPUTS), "torchvision"
    (a builder of torchvision.models, ``target`` its name), "module" (a factory ``attr`` of the
    importable module ``target``) or "file" (a factory ``attr`` of the Python file ``target``).
    A factory is called with the run's ``model_args`` and returns an nn.Module."""

    kind: str
    target: str
    attr: str = ""

    @property
    def is_builtin(self) -> bool:
        return self.kind == "builtin"


MODEL_FORMS = "torchvision:NAME (a torchvision.models builder), package.module:FACTORY or path/to/file.py:FACTORY"


def model_source(value: str) -> ModelSource | None:
    """The source ``value`` names, or None when it has none of the forms."""
    if value in MODEL_INPUTS:
        return ModelSource("builtin", value)
    prefix, _, name = value.partition(":")
    if prefix == TORCHVISION:
        return ModelSource(TORCHVISION, name) if IDENTIFIER.fullmatch(name) else None
    target, sep, attr = value.rpartition(":")
    if not sep or not IDENTIFIER.fullmatch(attr) or not target.strip():
        return None
    if target.endswith(".py"):
        return ModelSource("file", target, attr)
    return ModelSource("module", target, attr) if MODULE_NAME.fullmatch(target) else None


def model_problem(value: object) -> str | None:
    """What ``model`` must be (None when ``value`` has one of the forms)."""
    if isinstance(value, str) and model_source(value) is not None:
        return None
    return f"one of {', '.join(MODEL_INPUTS)}, or {MODEL_FORMS}"


@dataclass(frozen=True)
class DataSource:
    """Where a ``dataset`` comes from: ``kind`` "catalog" (a name of DATASETS), "imagefolder"
    (torchvision's ImageFolder at the directory ``target``), "tensors" (a file holding a dict of
    x_train, y_train, x_test, y_test) or "torchvision" (the torchvision.datasets class
    ``target``, read from and downloaded into data_dir)."""

    kind: str
    target: str

    @property
    def in_catalog(self) -> bool:
        return self.kind == "catalog"

    @property
    def reads_data_dir(self) -> bool:
        """Whether its files are read from (or downloaded into) data_dir: a data set rlr knows
        that needs files, or a torchvision class. An image folder or a tensor file is read from
        its own path; rlr's in-memory data sets read no file."""
        if self.in_catalog:
            return DATASETS[self.target].needs_files
        return self.kind == TORCHVISION


DATA_FORMS = "imagefolder:PATH, tensors:FILE.pt or torchvision:CLASS (a torchvision.datasets class)"
DATA_KINDS = ("imagefolder", "tensors", TORCHVISION)


def data_source(value: str) -> DataSource | None:
    """The source ``value`` names, or None when it has none of the forms."""
    if value in DATASETS:
        return DataSource("catalog", value)
    kind, sep, target = value.partition(":")
    if not sep or kind not in DATA_KINDS or not target.strip():
        return None
    if kind == TORCHVISION and not IDENTIFIER.fullmatch(target):
        return None
    return DataSource(kind, target)


def dataset_problem(value: object) -> str | None:
    """What ``dataset`` must be (None when ``value`` has one of the forms)."""
    if isinstance(value, str) and data_source(value) is not None:
        return None
    return f"one of {', '.join(DATASETS)}, or {DATA_FORMS}"


def torchvision_weights(value: str) -> str | None:
    """The name of torchvision's weights ``value`` asks for ("DEFAULT", "IMAGENET1K_V1"), or
    None when it names a file."""
    prefix, sep, name = value.partition(":")
    return name if sep and prefix == TORCHVISION else None


def weights_problem(value: object) -> str | None:
    """What ``weights`` must be: empty (none), a file (a state dict or an rlr checkpoint), or
    torchvision:DEFAULT (or another weights name of the torchvision model)."""
    if isinstance(value, str):
        name = torchvision_weights(value)
        if name is None or IDENTIFIER.fullmatch(name):
            return None
    return (
        'a file (a state dict or an rlr checkpoint), "torchvision:DEFAULT" (or another name of '
        'the torchvision model\'s weights), or "" for none'
    )


# What an attack is, as far as the sanity checks care.
SINGLE_STEP = "single-step"  # FGSM
ITERATIVE = "iterative"  # white-box, many gradient steps: PGD, APGD, FAB, CW
ENSEMBLE = "ensemble"  # white-box and black-box parts, per-image worst case (AutoAttack)
BLACK_BOX = "black-box"  # no gradients: Square
LINF, L2 = "linf", "l2"


@dataclass(frozen=True)
class AttackFacts:
    """One attack: ``norm`` is what ε measures (L∞ or L2, pixel units on [0, 1]); ``uses_steps``:
    PGD's step count and step size apply; ``uses_restarts``: random restarts apply;
    ``default_samples``: test images ``rlr eval`` attacks when not told (0: all), for attacks too
    slow for the whole set; ``needs``: the package that runs it. How each runs is in attacks.py."""

    name: str
    summary: str
    kind: str
    norm: str
    uses_steps: bool = False
    uses_restarts: bool = False
    default_samples: int = 0
    needs: str = "advertorch"

    @property
    def max_eps(self) -> float:
        """L∞ budgets live in [0, 1]; an L2 budget is any length."""
        return 1.0 if self.norm == LINF else float("inf")


ATTACKS: dict[str, AttackFacts] = {
    a.name: a
    for a in (
        AttackFacts("fgsm", "FGSM, one gradient-sign step (L∞)", SINGLE_STEP, LINF),
        AttackFacts(
            "pgd-linf",
            "PGD with random starts (L∞), worst case over --restarts",
            ITERATIVE,
            LINF,
            uses_steps=True,
            uses_restarts=True,
        ),
        AttackFacts(
            "pgd-l2",
            "PGD with random starts (L2), worst case over --restarts",
            ITERATIVE,
            L2,
            uses_steps=True,
            uses_restarts=True,
        ),
        AttackFacts(
            "cw-l2",
            "Carlini-Wagner L2; robust when the found perturbation is longer than ε",
            ITERATIVE,
            L2,
            default_samples=500,
        ),
        AttackFacts(
            "autoattack",
            "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), per-image worst case (L∞)",
            ENSEMBLE,
            LINF,
            default_samples=1000,
            needs="pyautoattack",
        ),
        AttackFacts(
            "square",
            "Square, black-box, 5000 queries (L∞)",
            BLACK_BOX,
            LINF,
            default_samples=1000,
            needs="pyautoattack",
        ),
    )
}
