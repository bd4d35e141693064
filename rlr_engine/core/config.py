"""The run config: every setting of a run, its type, range and meaning declared once (each
field's ``Setting``), checked by the one checker of ``validation`` whichever way it arrives — a
preset file, ``--set``, a config.toml, or code building a ``RunConfig`` directly. A RunConfig
cannot exist invalid. ``AttackSpec`` is the spec of one attack, built from a config or from
``rlr eval``'s flags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field, fields
from typing import Any

from rlr_engine.core.catalog import (
    ADAPTIVE_METHODS,
    ATTACKS,
    CORE_OPTIMIZERS,
    CUDA_GRAPHS,
    DEVICES,
    LOW_RANK_FORWARDS,
    METHODS,
    PRECISIONS,
    STEP_SCALINGS,
    TORCHVISION,
    AttackFacts,
    data_source,
    dataset_problem,
    model_data_problem,
    model_problem,
    model_source,
    torchvision_weights,
    weights_problem,
)
from rlr_engine.core.errors import PresetError
from rlr_engine.core.validation import (
    ADAPT_EVERY,
    BETA,
    LR,
    TAU,
    THETA,
    NumberRange,
    Rule,
    Setting,
    Unfit,
    eps_problem,
    shown,
)


def _number(low: float, high: float, low_open: bool = False, high_open: bool = False) -> NumberRange:
    return NumberRange(low, high, low_open, high_open)


# final_attack_samples: -1 stands for the attack's own default (catalog.AttackFacts.default_samples).
ATTACK_DEFAULT = -1
FINAL_ATTACK_SAMPLES = NumberRange(ATTACK_DEFAULT, 10**7, note="-1: the attack's default, 0: all")
SEED_RANGE = NumberRange(0, 2**31 - 1)

RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_RUN_NAME = 64


def run_name_problem(value: Any) -> str | None:
    """What a run's name must be (None when ``value`` is one): it is part of its directory's
    name (runs/<stamp>-<name>/), so one plain path component."""
    if isinstance(value, str) and len(value) <= MAX_RUN_NAME and RUN_NAME.fullmatch(value):
        return None
    return f"1 to {MAX_RUN_NAME} letters, digits, '.', '_' or '-', not starting with '.' (it names the run's directory)"


def run_name_from(text: str) -> str:
    """A run name made from ``text`` that the user did not choose as one (a preset file's name,
    the name in a run directory written before names were checked): every other character
    becomes '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip(".")[:MAX_RUN_NAME]
    return name or "run"


def _device(value: Any) -> str | None:
    if isinstance(value, str) and (value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit())):
        return None
    return f"{', '.join(DEVICES)} or cuda:N"


def _eps(values: list) -> str | None:
    """What every attack's budgets share; validate() then checks them against the run's attack
    (L∞: [0, 1], L2: any length), whose facts in catalog.ATTACKS say which."""
    return eps_problem(values, max(facts.max_eps for facts in ATTACKS.values()))


def _milestones(values: Any) -> str | None:
    return None if values is not None and all(v >= 0 for v in values) else "a list of epoch numbers >= 0"


def _spec(kind: type, rule: Rule = None, help: str = "", item: type | None = None) -> dict[str, Setting]:
    return {"setting": Setting(kind, rule, item=item, help=help)}


def _patterns(values: Any) -> str | None:
    if values is not None and all(v.strip() for v in values):
        return None
    return 'a list of glob patterns on module names, e.g. ["layer3.*", "fc"]'


def _finite(values: Any) -> str | None:
    # Compared, not math.isfinite: an integer no float holds is checked before it is converted.
    if values is not None and all(-math.inf < v < math.inf for v in values):
        return None
    return "a list of finite numbers, one per image channel (or one for all), [] for the default"


def _positive(values: Any) -> str | None:
    if values is not None and all(0 < v < math.inf for v in values):
        return None
    return "a list of numbers > 0, one per image channel (or one for all), [] for the default"


def _image_size(value: Any) -> str | None:
    return None if value is not None and 0 <= value <= 4096 else "an integer in [0, 4096] (0: the data's own size)"


def _model_args(value: Any) -> str | None:
    return None if value is not None else "a table of keyword arguments, e.g. {num_classes = 10}"


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved run recipe."""

    name: str = field(default="custom", metadata=_spec(str, run_name_problem, "preset name; names the run's directory"))
    description: str = field(default="", metadata=_spec(str, help="one line of what it is for"))
    dataset: str = field(
        default="digits",
        metadata=_spec(
            str,
            dataset_problem,
            "a data set rlr knows, imagefolder:PATH (PATH/train and PATH/test, or one folder split by "
            "test_fraction), tensors:FILE.pt (x_train, y_train, x_test, y_test; images in [0, 1]) or "
            "torchvision:CLASS; a relative path is the preset file's folder's (--set: the working directory's)",
        ),
    )
    dataset_args: dict = field(
        default_factory=dict,
        metadata=_spec(
            dict,
            _model_args,
            'torchvision:CLASS data sets: extra keyword arguments of the class, e.g. {split = "digits"}',
        ),
    )
    image_size: int = field(
        default=0,
        metadata=_spec(
            int,
            _image_size,
            "resize images once when the data load (shorter side, then a centre crop) to this size (0: as they are)",
        ),
    )
    mean: tuple[float, ...] = field(
        default=(),
        metadata=_spec(
            tuple,
            _finite,
            "per-channel mean the model subtracts from [0, 1] pixels ([]: the data set's own, or measured "
            "on the training split for data sets rlr does not know)",
            item=float,
        ),
    )
    std: tuple[float, ...] = field(
        default=(), metadata=_spec(tuple, _positive, "per-channel standard deviation the model divides by", item=float)
    )
    test_fraction: float = field(
        default=0.2,
        metadata=_spec(
            float,
            _number(0, 0.9, low_open=True),
            "imagefolder:PATH without train/ and test/ folders: the share of its images held out for testing",
        ),
    )
    model: str = field(
        default="digits-cnn",
        metadata=_spec(
            str,
            model_problem,
            "a model rlr knows, torchvision:NAME, package.module:FACTORY or path/to/file.py:FACTORY "
            "(a relative path is the preset file's folder's; --set: the working directory's)",
        ),
    )
    model_args: dict = field(
        default_factory=dict,
        metadata=_spec(
            dict, _model_args, "keyword arguments of a torchvision builder or a factory, e.g. {num_classes = 10}"
        ),
    )
    weights: str = field(
        default="",
        metadata=_spec(
            str,
            weights_problem,
            "weights loaded into the model before it is converted: a state dict or rlr checkpoint file, "
            'or torchvision:DEFAULT ("" for none)',
        ),
    )
    weights_skip_mismatched: bool = field(
        default=False,
        metadata=_spec(
            bool,
            help="leave parameters whose shape differs from the weights' as initialised (a new classifier "
            "head), naming them in the run's events; other mismatches stay errors",
        ),
    )
    init_from: str = field(
        default="",
        metadata=_spec(
            str,
            help="warm start: the checkpoint (or run directory) of an rlr run of the same model, dense or "
            "low-rank; its weights are converted as this run's method asks",
        ),
    )
    method: str = field(
        default="lowrank",
        metadata=_spec(
            str,
            tuple(METHODS),
            "dense: no factorisation; lowrank: CondLR (tau = inf is vanilla low-rank); "
            "robust-dlrt: rank-adaptive with the soft regularizer beta; condlr-adaptive: "
            "rank-adaptive with kappa(S) <= 1 + tau at every window boundary",
        ),
    )
    tau: float = field(
        default=0.1, metadata=_spec(float, TAU, "conditioning tolerance: kappa(S) <= 1 + tau; inf switches it off")
    )
    rank_fraction: float = field(
        default=0.2,
        metadata=_spec(
            float,
            _number(0, 1, low_open=True),
            "fraction of each layer's full rank kept (rank-adaptive: the starting rank)",
        ),
    )
    rank_energy: float = field(
        default=0.0,
        metadata=_spec(
            float,
            _number(0, 1),
            "ranks by energy: the fewest singular values of each weight holding this fraction of "
            "||W||_F^2 (0: ranks by rank_fraction)",
        ),
    )
    lowrank_include: tuple[str, ...] = field(
        default=(),
        metadata=_spec(
            tuple, _patterns, "glob patterns of the module names to factorise ([]: every Linear and Conv2d)", item=str
        ),
    )
    lowrank_exclude: tuple[str, ...] = field(
        default=(), metadata=_spec(tuple, _patterns, "glob patterns of module names to leave dense", item=str)
    )
    max_rank_fraction: float = field(
        default=0.5,
        metadata=_spec(
            float,
            _number(0, 1, low_open=True),
            "rank-adaptive: storage (largest rank) of each layer as a fraction of "
            "its full rank; at least rank_fraction",
        ),
    )
    adapt_every: int = field(
        default=10,
        metadata=_spec(
            int,
            ADAPT_EVERY,
            "rank-adaptive: batches per window (augment on the first, truncate with truncate_theta on the last)",
        ),
    )
    beta: float = field(
        default=0.0,
        metadata=_spec(
            float,
            BETA,
            "rank-adaptive: weight of the soft conditioning regularizer "
            "||S S^T - (||S||_F^2 / r) I||_F added to the loss (0: off)",
        ),
    )
    core_optimizer: str = field(
        default="sgd",
        metadata=_spec(
            str,
            tuple(CORE_OPTIMIZERS),
            "rank-adaptive: optimizer of the cores S and the other parameters "
            "(sgd: with momentum; adamw: momentum is not used)",
        ),
    )
    last_layer: str = field(
        default="dense",
        metadata=_spec(
            str, ("dense", "full-rank"), "dense: leave the classifier dense; full-rank: factorise it at full rank"
        ),
    )
    step_scaling: str = field(default="reference", metadata=_spec(str, tuple(STEP_SCALINGS)))
    reference_compat: bool = field(default=False, metadata=_spec(bool))
    channels_last: bool = field(
        default=False,
        metadata=_spec(
            bool,
            help="run convolutions channels-last "
            "(much faster low-rank convs on CPU; inputs stay contiguous for attacks)",
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_spec(
            bool,
            help="compile the model's forward and backward "
            "with torch.compile (fewer kernel launches; the first steps take longer)",
        ),
    )
    precision: str = field(
        default="float32",
        metadata=_spec(
            str,
            PRECISIONS,
            "bf16: forward and backward under autocast to bfloat16; factors, momentum, "
            "retraction and core projection stay float32",
        ),
    )
    cuda_graphs: str = field(
        default="auto",
        metadata=_spec(
            str,
            CUDA_GRAPHS,
            "capture forward, backward and optimizer step as one CUDA graph, captured again "
            "when shapes or tau's regime change (on: CUDA, fixed-rank methods, one process; "
            "auto: the eager step until the captured one has been timed on a GPU)",
        ),
    )
    low_rank_forward: str = field(
        default="auto",
        metadata=_spec(
            str,
            ("auto", *LOW_RANK_FORWARDS),
            "how low-rank layers compute their output: factored (through the rank-r intermediate: "
            "fewer FLOPs) or composed (U S V^T formed, then one dense kernel: fewer launches); auto: "
            "per layer the faster, timed on the run's accelerator (as the step runs, eager or "
            "replayed from a CUDA graph) at the start and after a truncation, recorded in the "
            "events; factored on the CPU and with compile",
        ),
    )
    epochs: int = field(default=10, metadata=_spec(int, _number(1, 100_000)))
    max_steps: int = field(
        default=0, metadata=_spec(int, _number(0, 10**9), "stop after this many steps (0: no limit)")
    )
    batch_size: int = field(default=128, metadata=_spec(int, _number(1, 65_536)))
    lr: float = field(default=0.1, metadata=_spec(float, LR))
    momentum: float = field(default=0.3, metadata=_spec(float, _number(0, 1, high_open=True)))
    weight_decay: float = field(default=0.0, metadata=_spec(float, _number(0, 1)))
    milestones: tuple[int, ...] = field(default=(), metadata=_spec(tuple, _milestones, item=int))
    gamma: float = field(default=0.3, metadata=_spec(float, _number(0, 1, low_open=True)))
    val_fraction: float = field(default=0.25, metadata=_spec(float, _number(0, 0.9)))
    seed: int = field(default=0, metadata=_spec(int, SEED_RANGE))
    eval_every: int = field(
        default=1, metadata=_spec(int, _number(0, 100_000), "epochs between evaluations (0: at the end)")
    )
    attack: str = field(default="fgsm", metadata=_spec(str, tuple(ATTACKS)))
    eps: tuple[float, ...] = field(
        default=(0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06), metadata=_spec(tuple, _eps, item=float)
    )
    attack_every: int = field(
        default=1, metadata=_spec(int, _number(0, 100_000), "epochs between attacks (0: at the end)")
    )
    attack_samples: int = field(
        default=1000,
        metadata=_spec(
            int,
            _number(0, 10**7),
            "test images of the attacks during training and from a dashboard, a seeded subset (0: all); "
            "the final attack takes final_attack_samples",
        ),
    )
    final_attack_samples: int = field(
        default=-1,
        metadata=_spec(
            int,
            FINAL_ATTACK_SAMPLES,
            "test images of the attack that ends the run, a seeded subset (0: all; -1: the attack's "
            "default: all for fgsm and pgd, its own subset for cw-l2, autoattack and square)",
        ),
    )
    pgd_steps: int = field(default=10, metadata=_spec(int, _number(1, 10_000)))
    pgd_step_size: float = field(default=0.0, metadata=_spec(float, _number(0, 1), "0: 2.5 eps / steps"))
    truncate_every: int = field(
        default=0, metadata=_spec(int, _number(0, 100_000), "epochs between scheduled truncations (0: never)")
    )
    truncate_theta: float = field(default=0.1, metadata=_spec(float, THETA))
    min_rank: int = field(default=1, metadata=_spec(int, _number(1, 100_000)))
    checkpoint_every: int = field(
        default=1, metadata=_spec(int, _number(0, 100_000), "epochs between checkpoints (0: only at the end)")
    )
    data_dir: str = field(default="data", metadata=_spec(str))
    download: bool = field(default=True, metadata=_spec(bool))
    device: str = field(default="auto", metadata=_spec(str, _device))
    snapshot_interval: float = field(default=0.25, metadata=_spec(float, _number(0.01, 60)))
    tensorboard: bool = field(
        default=False,
        metadata=_spec(
            bool,
            help="also write TensorBoard event files into "
            "runs/<id>/tensorboard/ (needs pip install 'rlr[tensorboard]')",
        ),
    )

    _source: InitVar[str] = "settings"

    def __post_init__(self, _source: str) -> None:
        """Every field in its type and range, and the rules between fields: a RunConfig cannot
        be built invalid (PresetError naming ``_source``, the key, the value and what is
        allowed)."""
        for f in fields(self):
            object.__setattr__(self, f.name, coerce_setting(f.name, getattr(self, f.name), _source))
        self._check_combination(_source)

    def _check_combination(self, source: str) -> None:
        config = self
        problem = model_data_problem(config.model, config.dataset)
        if problem:
            raise PresetError(f"{source}: {problem}")
        self._check_sources(source)
        problem = eps_problem(config.eps, ATTACKS[config.attack].max_eps)
        if problem:
            raise PresetError(
                f"{source}: eps = {'[' + ', '.join(f'{e:g}' for e in config.eps) + ']'} is not allowed with attack = "
                f"{config.attack!r}: must be {problem}"
            )
        if config.is_rank_adaptive and config.max_rank_fraction < config.rank_fraction:
            raise PresetError(
                f"{source}: max_rank_fraction = {config.max_rank_fraction!r} is not allowed: must be "
                f">= rank_fraction = {config.rank_fraction!r} (the starting rank must fit the storage)"
            )
        if config.cuda_graphs == "on" and config.is_rank_adaptive:
            raise PresetError(
                f"{source}: cuda_graphs = 'on' is not allowed with method = {config.method!r}: must be 'auto' or "
                "'off' (a rank-adaptive step decides its ranks on the host)"
            )
        if config.cuda_graphs == "on" and config.reference_compat:
            raise PresetError(
                f"{source}: cuda_graphs = 'on' is not allowed with reference_compat = true: must be 'auto' or 'off' "
                "(its Householder QR waits for the host)"
            )
        if config.is_rank_adaptive and config.truncate_every:
            raise PresetError(
                f"{source}: truncate_every = {config.truncate_every!r} is not allowed with method = "
                f"{config.method!r}: must be 0 (it truncates every adapt_every batches)"
            )

    def _check_sources(self, source: str) -> None:
        """The rules between the model, its weights and the data."""
        model, data = model_source(self.model), data_source(self.dataset)
        assert model is not None and data is not None  # their Settings checked the forms
        if self.model_args and model.is_builtin:
            raise PresetError(
                f"{source}: model_args = {shown(self.model_args)} is not allowed with model = {self.model!r}: "
                f"rlr's own models take their shape from the data; model_args apply to torchvision: and factory models"
            )
        if torchvision_weights(self.weights) is not None and model.kind != TORCHVISION:
            raise PresetError(
                f"{source}: weights = {self.weights!r} is not allowed with model = {self.model!r}: torchvision's "
                f"weights need a torchvision:NAME model (give a state dict file instead)"
            )
        if self.weights and self.init_from:
            raise PresetError(
                f"{source}: init_from = {self.init_from!r} is not allowed with weights = {self.weights!r}: "
                f"both set the starting weights; give one"
            )
        if self.dataset_args and data.kind != TORCHVISION:
            raise PresetError(
                f"{source}: dataset_args = {shown(self.dataset_args)} is not allowed with dataset = "
                f"{self.dataset!r}: they apply to torchvision:CLASS data sets"
            )
        if bool(self.mean) != bool(self.std) or (self.mean and len(self.mean) != len(self.std)):
            raise PresetError(
                f"{source}: mean = {shown(list(self.mean))} and std = {shown(list(self.std))} are not allowed: "
                f"give both, with one value per image channel each (or neither)"
            )
        if data.kind == "imagefolder" and self.val_fraction + self.test_fraction >= 1:
            raise PresetError(
                f"{source}: val_fraction = {self.val_fraction!r} with test_fraction = {self.test_fraction!r} is "
                f"not allowed: together they must leave images to train on (sum < 1)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``, checked as a new config is."""
        return validate(dict(self.to_dict(), **changes), source="settings")

    @property
    def is_low_rank(self) -> bool:
        return self.method != "dense"

    @property
    def is_rank_adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def attack_spec(
        self, attack: str | None = None, eps=None, steps: int | None = None, step_size: float | None = None
    ) -> AttackSpec:
        """The run's attack, with any of its settings replaced (None keeps the run's own)."""
        return AttackSpec(
            attack or self.attack,
            tuple(eps) if eps else self.eps,
            self.pgd_steps if steps is None else steps,
            self.pgd_step_size if step_size is None else step_size,
        )

    @property
    def final_samples(self) -> int:
        """Test images the final attack uses (0: all): ``final_attack_samples``, or for -1 the
        attack's default (every image for fgsm and pgd, a subset for the slow attacks)."""
        if self.final_attack_samples == ATTACK_DEFAULT:
            return ATTACKS[self.attack].default_samples
        return self.final_attack_samples

    def attack_seed(self, step: int) -> int:
        """The seed of the run's attacks at ``step`` (scheduled, asked for from a dashboard, the
        final one, ``rlr compare``'s): made of the run's seed and the step, so attacking the same
        model again draws the same random starts and gives the same numbers."""
        return (self.seed * 1_000_003 + step) % (2**31)

    @property
    def method_label(self) -> str:
        """The preset's method with its starting τ (a live run's τ may differ: see method_label())."""
        return method_label(self.method, self.tau, self.beta)


def method_label(method: str, tau: float, beta: float = 0.0) -> str:
    """dense, vanilla low-rank (τ = ∞), CondLR τ = …, or a rank-adaptive method."""
    if method == "dense":
        return "dense"
    if method == "robust-dlrt":
        return f"robust-dlrt β={beta:g}"
    if method == "condlr-adaptive":
        return f"CondLR-adaptive τ={tau:g}"
    return "low-rank τ=inf" if math.isinf(tau) else f"CondLR τ={tau:g}"


FIELDS = {f.name: f for f in fields(RunConfig)}
# A preset file must say what it trains: without these the defaults would silently train
# something else. Overrides (--set) may still supply them.
REQUIRED_IN_FILE = ("dataset", "model", "method")


def coerce_setting(key: str, value: Any, source: str) -> Any:
    """One key's value from ``source`` (a preset file, --set, a config.toml) in its field's type;
    PresetError naming the source, the key, the value and what is allowed otherwise."""
    try:
        return FIELDS[key].metadata["setting"].coerce(value)
    except Unfit as allowed:
        shown_value = list(value) if isinstance(value, tuple) else value
        raise PresetError(f"{source}: {key} = {shown(shown_value)} is not allowed: must be {allowed}") from None


def validate(raw: Mapping[str, Any], source: str = "preset") -> RunConfig:
    """Check every key and value of a raw mapping and build a RunConfig from it."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise PresetError(f"{source}: unknown key {unknown[0]!r}; allowed keys: {', '.join(FIELDS)}")
    values = {key: coerce_setting(key, value, source) for key, value in raw.items()}
    return RunConfig(**values, _source=source)


@dataclass(frozen=True)
class AttackSpec:
    """Which attack, at which budgets. ``steps`` and ``step_size`` apply to PGD; a step size of
    0 means 2.5·ε/steps (Madry et al.). ``restarts``: PGD runs from that many random starts and
    an image counts as robust only when it survives all of them."""

    name: str = "fgsm"
    eps: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03)
    steps: int = 10
    step_size: float = 0.0
    restarts: int = 1

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {self.name!r}")
        problem = eps_problem(self.eps, self.info.max_eps)
        if problem:
            raise ValueError(f"eps must be {problem} for {self.name}, got {list(self.eps)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.step_size < math.inf:  # NaN fails too
            raise ValueError(f"step_size must be a finite number >= 0, got {self.step_size}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if self.restarts > 1 and not self.info.uses_restarts:
            raise ValueError(
                f"restarts apply to {', '.join(n for n, a in ATTACKS.items() if a.uses_restarts)}, not to {self.name}"
            )

    @property
    def info(self) -> AttackFacts:
        return ATTACKS[self.name]
