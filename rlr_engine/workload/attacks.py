"""Adversarial attacks behind one registry, and robustness evaluation with sanity checks.

All attacks work in [0, 1] pixel space: models normalise their inputs themselves. Each attack
decides, per image and per ε, whether the image is still classified correctly ("robust"); the
accuracy at ε is the fraction of robust images. Attacks made of several parts (restarts,
AutoAttack's four attacks) report the per-image worst case: an image counts only when it
survives every part.

Libraries: advertorch 0.2.3 for FGSM's reference, PGD and Carlini–Wagner; pyautoattack 0.2.0 (the
optional ``attacks`` extra) for AutoAttack and Square. pyautoattack is fra31/auto-attack, the
AutoAttack authors' code (Croce & Hein; its attack files carry their headers and the published
settings), packaged for PyPI. torchattacks 3.5.1 also has an AutoAttack, but it is a
re-implementation that ships fewer steps than published on some paths and pins an old
``requests``; ``benchmarks/autoattack_crosscheck.py`` compares the two on one model (digits CNN,
200 test images, ε = 0.1: pyautoattack 59.5 %, torchattacks 60.0 % robust — one image apart, the
authors' code the stronger; numbers in benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlr_engine.core.catalog import ATTACKS, BLACK_BOX, ENSEMBLE, ITERATIVE, LINF, SINGLE_STEP
from rlr_engine.core.config import AttackSpec
from rlr_engine.core.extras import attack_unavailable, require_attack
from rlr_engine.core.sanity import LARGE_EPS, AttackRecord, Component, SanityReport, sanity_report


def _zero_gradients(x) -> None:
    """What torch.autograd.gradcheck.zero_gradients did before PyTorch removed it."""
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    else:
        for item in x:
            _zero_gradients(item)


def import_advertorch():
    """Import advertorch.attacks on current PyTorch.

    advertorch 0.2.3 (its last release) imports ``zero_gradients`` from
    ``torch.autograd.gradcheck``, which PyTorch removed; the fix upstream was never released.
    Restore that one function on the module before importing advertorch."""
    import torch.autograd.gradcheck  # noqa: F401  (make sure the module is in sys.modules)

    module = sys.modules["torch.autograd.gradcheck"]
    if not hasattr(module, "zero_gradients"):
        module.zero_gradients = _zero_gradients
    import advertorch.attacks

    return advertorch.attacks


def import_pyautoattack():
    """The AutoAttack authors' package, from the optional ``attacks`` extra."""
    try:
        import pyautoattack
    except ImportError:
        raise attack_unavailable("autoattack") from None
    return pyautoattack


@dataclass(frozen=True)
class AttackBudget:
    """Iteration counts of the attacks that have fixed published ones. The defaults are those:
    AutoAttack's standard version (APGD-CE and APGD-T 100 iterations, FAB-T 100, Square 5000
    queries) and Carlini–Wagner's 9 binary-search steps, with 1000 iterations per search step
    instead of the paper's 10 000 (CPU time; abort-early stops most searches well before either).
    Smaller budgets exist for quick tests only and are not reachable from the command line or
    presets."""

    apgd_iterations: int = 100
    fab_iterations: int = 100
    square_queries: int = 5000
    cw_search_steps: int = 9
    cw_iterations: int = 1000

    def apply(self, aa) -> None:
        """Set AutoAttack's iteration counts (checking the library's own when standard)."""
        if (self.apgd_iterations, self.fab_iterations, self.square_queries) == (100, 100, 5000):
            found = (aa.apgd.n_iter, aa.apgd_targeted.n_iter, aa.fab.n_iter, aa.square.n_queries)
            if found != (100, 100, 100, 5000):  # the library must still be the published version
                raise RuntimeError(f"pyautoattack's standard version changed: iterations {found}")
            return
        for apgd in (aa.apgd, aa.apgd_targeted):
            # APGD derives its step-size checkpoints from n_iter in __init__; keep them consistent.
            n = self.apgd_iterations
            apgd.n_iter = apgd.n_iter_orig = n
            apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = (
                max(int(0.22 * n), 1),
                max(int(0.06 * n), 1),
                max(int(0.03 * n), 1),
            )
        aa.fab.n_iter = self.fab_iterations
        aa.square.n_queries = self.square_queries


STANDARD = AttackBudget()
# AutoAttack's standard version, in the order it runs them (checked against the library at run time).
AUTOATTACK_PARTS = {"apgd-ce": ITERATIVE, "apgd-t": ITERATIVE, "fab-t": ITERATIVE, "square": BLACK_BOX}
# How the parts are named in print (the library's own names are the keys).
PART_LABELS = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}

PartProgress = Callable[[str, float, int, int], None]
"""Told while an attack made of slow parts runs (AutoAttack's four, Square): (part, ε, images
done, images the part attacks), once as each part starts on a batch (0 done) and once as it
ends. The library runs a part on a whole batch at once, so that is as fine as it gets without
running smaller batches, which would slow it."""


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Random draws inside (PGD's random starts, the libraries' own reseeding) start from
    ``seed``; the global random state outside is restored after, so an attack in the middle
    of a training run changes nothing of its random stream."""
    devices: list[int] = []
    if device.type == "cuda":  # the model's GPU, and the current one, which the libraries reseed
        current = torch.cuda.current_device()
        devices = sorted({current if device.index is None else device.index, current})
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@dataclass(frozen=True)
class Outcome:
    """Per image of a batch, at one ε: still correct after the attack; for attacks in parts, the
    same after each part (cumulative)."""

    robust: Tensor
    parts: tuple[tuple[str, Tensor], ...] = ()


@torch.no_grad()
def _predicts(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return model(x).argmax(1) == y


def fgsm_batch(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float]) -> list[Tensor]:
    """FGSM at several ε from one gradient: x_ε = clip(x + ε·sign(∇ₓ L), 0, 1).

    advertorch's GradientSignAttack computes the same thing but one gradient per ε; the
    gradient does not depend on ε, so it is taken once here (tests check equality)."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    direction = grad.sign()
    with torch.no_grad():
        return [(x + e * direction).clamp_(0.0, 1.0) if e > 0 else x.detach() for e in eps]


def pgd_batch(model: nn.Module, x: Tensor, y: Tensor, eps: float, spec: AttackSpec) -> Tensor:
    """advertorch's L∞ or L2 PGD from one random start, clipped to [0, 1]."""
    if eps == 0:
        return x
    attacks = import_advertorch()
    cls = attacks.LinfPGDAttack if spec.name == "pgd-linf" else attacks.L2PGDAttack
    step = spec.step_size or 2.5 * eps / spec.steps
    adversary = cls(
        model,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        eps=eps,
        nb_iter=spec.steps,
        eps_iter=step,
        rand_init=True,
        clip_min=0.0,
        clip_max=1.0,
        targeted=False,
    )
    return adversary.perturb(x, y)


def _run_fgsm(model, x, y, spec, budget, seed, on_part) -> list[Outcome]:
    return [Outcome(_predicts(model, x_adv, y)) for x_adv in fgsm_batch(model, x, y, spec.eps)]


def _run_pgd(model, x, y, spec, budget, seed, on_part) -> list[Outcome]:
    """Worst case over ``spec.restarts`` random starts (drawn from the generator ``seeded`` set)."""
    outcomes = []
    for eps in spec.eps:
        robust = _predicts(model, x, y)
        for _ in range(spec.restarts if eps > 0 else 0):
            robust &= _predicts(model, pgd_batch(model, x, y, eps, spec), y)
        outcomes.append(Outcome(robust))
    return outcomes


def _run_cw(model, x, y, spec, budget, seed, on_part) -> list[Outcome]:
    """advertorch's CarliniWagnerL2Attack searches the smallest L2 perturbation that fools the
    model, once for all ε. ε is an L2 budget: an image is robust at ε when the attack failed or
    the perturbation it found is longer than ε (the model was correct on it to begin with).
    The paper's settings: learning rate 0.01, initial constant 1e-3, confidence 0; iteration
    counts from ``budget``."""
    attacks = import_advertorch()
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    adversary = attacks.CarliniWagnerL2Attack(
        model,
        num_classes,
        confidence=0,
        targeted=False,
        learning_rate=0.01,
        binary_search_steps=budget.cw_search_steps,
        max_iterations=budget.cw_iterations,
        abort_early=True,
        initial_const=1e-3,
        clip_min=0.0,
        clip_max=1.0,
    )
    clean = _predicts(model, x, y)
    x_adv = adversary.perturb(x, y)
    fooled = ~_predicts(model, x_adv, y)
    distance = (x_adv - x).flatten(1).norm(dim=1)
    return [Outcome(clean & (~fooled | (distance > eps))) for eps in spec.eps]


def _square(model, eps: float, device, budget: AttackBudget, seed: int):
    """Square as AutoAttack's standard version configures it."""
    from pyautoattack.square import SquareAttack

    return SquareAttack(
        model,
        p_init=0.8,
        n_queries=budget.square_queries,
        eps=eps,
        norm="Linf",
        n_restarts=1,
        seed=seed,
        verbose=False,
        device=device,
        resc_schedule=False,
    )


def _run_square(model, x, y, spec, budget, seed, on_part) -> list[Outcome]:
    import_pyautoattack()
    outcomes = []
    for eps in spec.eps:
        robust = _predicts(model, x, y)
        if eps > 0 and robust.any():
            idx = robust.nonzero().squeeze(1)
            _tell(on_part, "square", eps, 0, len(idx))
            x_adv = _square(model, eps, x.device, budget, seed).perturb(x[idx], y[idx])
            robust[idx] = _predicts(model, x_adv, y[idx])
            _tell(on_part, "square", eps, len(idx), len(idx))
        outcomes.append(Outcome(robust))
    return outcomes


def _tell(on_part: PartProgress | None, part: str, eps: float, done: int, total: int) -> None:
    if on_part is not None:
        on_part(part, eps, done, total)


def _run_autoattack(model, x, y, spec, budget, seed, on_part) -> list[Outcome]:
    """AutoAttack, standard version, L∞: APGD-CE, APGD-T, FAB-T and Square run in that order, each
    on the images the parts before it left correct (as the library's own evaluation does); the
    library runs each part so the accuracy after every part is known. With fewer than 10 classes
    the targeted parts use every other class as a target instead of 9."""
    AutoAttack = import_pyautoattack().AutoAttack
    clean = _predicts(model, x, y)
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    outcomes = []
    for eps in spec.eps:
        robust = clean.clone()
        if eps == 0:
            outcomes.append(Outcome(robust, tuple((name, robust) for name in AUTOATTACK_PARTS)))
            continue
        aa = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=x.device)
        aa.verbose = False
        if list(aa.attacks_to_run) != list(AUTOATTACK_PARTS):
            raise RuntimeError(f"pyautoattack's standard version changed: {aa.attacks_to_run}")
        budget.apply(aa)
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, num_classes - 1)
        parts = []
        for name in AUTOATTACK_PARTS:
            idx = robust.nonzero().squeeze(1)
            if len(idx):
                _tell(on_part, name, eps, 0, len(idx))
                aa.attacks_to_run = [name]
                _, y_adv = aa.run_standard_evaluation(x[idx], y[idx], batch_size=len(idx))
                robust[idx] = y_adv == y[idx]
                _tell(on_part, name, eps, len(idx), len(idx))
            parts.append((name, robust.clone()))
        outcomes.append(Outcome(robust, tuple(parts)))
    return outcomes


Runner = Callable[[nn.Module, Tensor, Tensor, AttackSpec, AttackBudget, int, PartProgress | None], list[Outcome]]
# How each attack of catalog.ATTACKS runs (its facts, torch-free, are there).
RUNNERS: dict[str, Runner] = {
    "fgsm": _run_fgsm,
    "pgd-linf": _run_pgd,
    "pgd-l2": _run_pgd,
    "cw-l2": _run_cw,
    "autoattack": _run_autoattack,
    "square": _run_square,
}
assert tuple(RUNNERS) == tuple(ATTACKS), "every attack of the catalog has a runner"


@dataclass(frozen=True)
class Robustness:
    """Accuracy under one attack at each ε of ``spec`` on ``samples`` images, and for attacks in
    parts the accuracy after each part (cumulative); ``seed`` started its random draws."""

    spec: AttackSpec
    accuracy: tuple[float, ...]
    samples: int
    parts: tuple[Component, ...] = ()
    seed: int = 0

    def by_eps(self) -> dict[float, float]:
        return dict(zip(self.spec.eps, self.accuracy))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form: attack, ε, accuracy, samples, the parts' accuracies and the seed."""
        return {
            "attack": self.spec.name,
            "eps": list(self.spec.eps),
            "accuracy": list(self.accuracy),
            "samples": self.samples,
            "parts": [part.to_dict() for part in self.parts],
            "seed": self.seed,
        }

    def record(self) -> AttackRecord:
        info = self.spec.info
        return AttackRecord(
            info.name, info.kind, info.norm, tuple(self.spec.eps), self.accuracy, self.samples, self.parts
        )


def _correct_counts(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: AttackSpec,
    batch_size: int,
    to_input,
    progress: Callable[[int], None] | None,
    budget: AttackBudget,
    seed: int,
    part_progress: PartProgress | None,
) -> tuple[Tensor, Tensor]:
    """Images still correct at each ε (and, for an ensemble, after each of its parts), as device
    tensors: counts add up across the shards of a data-parallel run. Random draws start from
    ``seed`` (see ``seeded``): the same call gives the same counts."""
    info = spec.info
    require_attack(info.name)
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(spec.eps), dtype=torch.long, device=labels.device)
    parts = len(AUTOATTACK_PARTS) if info.kind == ENSEMBLE else 0
    part_correct = torch.zeros(parts, len(spec.eps), dtype=torch.long, device=labels.device)
    runner = RUNNERS[info.name]
    try:
        with seeded(seed, labels.device):
            for start in range(0, len(labels), batch_size):
                x = images[start : start + batch_size]
                x = to_input(x) if to_input is not None else x.float()
                y = labels[start : start + batch_size]
                for i, outcome in enumerate(runner(model, x, y, spec, budget, seed, part_progress)):
                    correct[i] += outcome.robust.sum()
                    for j, (_, robust) in enumerate(outcome.parts):
                        part_correct[j, i] += robust.sum()
                if progress is not None:
                    progress(len(y) * len(spec.eps))
    finally:
        model.train(was_training)
    return correct, part_correct


def robustness(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: AttackSpec,
    batch_size: int = 256,
    to_input=None,
    progress: Callable[[int], None] | None = None,
    budget: AttackBudget = STANDARD,
    seed: int = 0,
    part_progress: PartProgress | None = None,
) -> Robustness:
    """Run ``spec`` on the images batch by batch; ``progress(n)`` is told after each batch how
    many images (× ε values) were done, ``part_progress`` how the parts of a slow attack go.
    ``images`` may be uint8 (converted with ``to_input``) or float in [0, 1]. The model is put in
    eval mode for the duration and restored afterwards. Random draws start from ``seed``; the
    global random state is left as it was."""
    correct, part_correct = _correct_counts(
        model, images, labels, spec, batch_size, to_input, progress, budget, seed, part_progress
    )
    n = max(len(labels), 1)
    part_names = list(AUTOATTACK_PARTS)[: part_correct.shape[0]]
    parts = tuple(
        Component(name, AUTOATTACK_PARTS[name], tuple(c / n for c in part_correct[j].tolist()))
        for j, name in enumerate(part_names)
    )
    return Robustness(spec, tuple(c / n for c in correct.tolist()), len(labels), parts, seed)


def adversarial_correct(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: AttackSpec,
    batch_size: int = 256,
    to_input=None,
    seed: int = 0,
) -> dict[float, Tensor]:
    """Number of images still classified correctly under the attack at each ε, as device
    tensors (a data-parallel run sums them over its ranks); random draws start from ``seed``."""
    correct, _ = _correct_counts(model, images, labels, spec, batch_size, to_input, None, STANDARD, seed, None)
    return dict(zip(spec.eps, correct))


def adversarial_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: AttackSpec,
    batch_size: int = 256,
    to_input=None,
    seed: int = 0,
) -> dict[float, float]:
    """Accuracy (fraction) under the attack at each ε; ε = 0 is the clean accuracy."""
    return robustness(model, images, labels, spec, batch_size, to_input, seed=seed).by_eps()


def probe_specs(spec: AttackSpec, dataset: str | None) -> list[AttackSpec]:
    """Extra measurements the sanity checks need next to an L∞ ``spec``:

    - FGSM: PGD (the same step settings) at its largest ε and at the data set's large ε, so
      FGSM can be held against an iterative attack and the large-ε check does not blame FGSM's
      own weakness at large budgets on the model;
    - PGD, AutoAttack: FGSM at the same ε (one gradient, cheap), and the attack itself at the
      data set's large ε when ``spec`` does not reach it.

    L2 attacks and Square get none (the checks compare L∞ white-box attacks)."""
    info = spec.info
    if info.norm != LINF or info.kind == BLACK_BOX:
        return []
    eps = tuple(e for e in spec.eps if e > 0)
    large = LARGE_EPS.get(dataset or "")
    beyond = (large,) if large is not None and max(spec.eps) < large else ()
    if info.kind == SINGLE_STEP:
        probe_eps = tuple(sorted(set(((max(eps),) if eps else ()) + beyond)))
        return [AttackSpec("pgd-linf", probe_eps, spec.steps, spec.step_size)] if probe_eps else []
    probes = [AttackSpec("fgsm", eps)] if eps else []
    if beyond:
        probes.append(AttackSpec(spec.name, beyond, spec.steps, spec.step_size, spec.restarts))
    return probes


@dataclass(frozen=True)
class CheckedRobustness:
    """The asked-for result, the probes measured for the checks, and the checks' report."""

    result: Robustness
    probes: tuple[Robustness, ...]
    sanity: SanityReport


def robustness_with_checks(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    spec: AttackSpec,
    dataset: str | None,
    probes: bool = True,
    to_input=None,
    progress: Callable[[int], None] | None = None,
    budget: AttackBudget = STANDARD,
    seed: int = 0,
    part_progress: PartProgress | None = None,
) -> CheckedRobustness:
    """``spec`` plus (when ``probes``) the probes of :func:`probe_specs`, and the sanity report
    over all of them; each starts its random draws from ``seed``."""
    kwargs = dict(to_input=to_input, progress=progress, budget=budget, seed=seed, part_progress=part_progress)
    result = robustness(model, images, labels, spec, **kwargs)
    extra = tuple(
        robustness(model, images, labels, p, **kwargs) for p in (probe_specs(spec, dataset) if probes else [])
    )
    report = sanity_report([result.record()] + [p.record() for p in extra], dataset)
    return CheckedRobustness(result, extra, report)


def work_units(spec: AttackSpec, dataset: str | None, samples: int, probes: bool = True) -> int:
    """What ``progress`` will count up to for :func:`robustness_with_checks`."""
    specs = [spec] + (probe_specs(spec, dataset) if probes else [])
    return samples * sum(len(s.eps) for s in specs)
