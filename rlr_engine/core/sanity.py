"""Sanity checks on robustness numbers, over plain records (no tensors, no torch).

A robustness number can look good for the wrong reason: the attack was weak, or the model masks
its gradients (a flat or saturated loss surface that white-box attacks cannot climb, while the
model is as fragile as ever). The checks below are the usual symptoms; every table that shows
adversarial accuracy shows their flags, and says which checks could not run.

- accuracy rises with ε: a stronger perturbation budget can only help an optimal attacker, so
  accuracy must be non-increasing in ε;
- an iterative L∞ attack (PGD, AutoAttack) above FGSM at equal ε: FGSM is PGD's first step, so an
  iterative attack that does worse failed to optimise;
- the black-box Square attack below the white-box ones at equal ε and norm: with useful gradients
  the white-box attacks should win; when a gradient-free search wins, gradients are masked;
- accuracy above 10 % at a large ε (0.3 for Fashion-MNIST, MNIST and digits): at that budget the
  image can be moved far enough to be another class; data sets without a stated large ε skip it.

A difference of at most one image (1 / samples; 0.5 % when the count is unknown) is noise and
never flagged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rlr_engine.core.catalog import BLACK_BOX, DATASETS, ENSEMBLE, ITERATIVE, L2, LINF, SINGLE_STEP  # noqa: F401 (L2 for callers)

KINDS = (SINGLE_STEP, ITERATIVE, ENSEMBLE, BLACK_BOX)
WHITE_BOX_ITERATIVE = (ITERATIVE, ENSEMBLE)

# ε (L∞, pixel units) at which an undefended model should be broken; absent: check skipped.
LARGE_EPS = {d.name: d.large_eps for d in DATASETS.values() if d.large_eps is not None}
LARGE_EPS_MAX_ACCURACY = 0.10
# A model whose clean accuracy is within this factor of chance (1/classes) has learned nothing
# an attack could take away (a constant prediction keeps its class's share whatever ε is).
AT_CHANCE = 1.5

ACCURACY_RISES = "accuracy-rises-with-eps"
ITERATIVE_ABOVE_FGSM = "iterative-above-fgsm"
BLACK_BOX_WINS = "black-box-beats-white-box"
HIGH_AT_LARGE_EPS = "high-accuracy-at-large-eps"
CODES = (ACCURACY_RISES, ITERATIVE_ABOVE_FGSM, BLACK_BOX_WINS, HIGH_AT_LARGE_EPS)


@dataclass(frozen=True)
class Component:
    """One part of an ensemble attack and the ensemble's accuracy per ε once this part has run
    (cumulative: the per-image worst case over this part and the ones before it)."""

    attack: str
    kind: str
    accuracy: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (``rlr eval --json``, comparison caches); :meth:`from_dict` reads it."""
        return {"attack": self.attack, "kind": self.kind, "accuracy": list(self.accuracy)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Component:
        return cls(str(raw["attack"]), str(raw["kind"]), tuple(float(a) for a in raw["accuracy"]))


@dataclass(frozen=True)
class AttackRecord:
    """Accuracy of one model under one attack at each ε (fractions in [0, 1]); ``norm`` is what
    ε measures; ``samples`` the number of images (0: unknown)."""

    attack: str
    kind: str
    norm: str
    eps: tuple[float, ...]
    accuracy: tuple[float, ...]
    samples: int = 0
    components: tuple[Component, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if len(self.eps) != len(self.accuracy):
            raise ValueError(f"{self.attack}: {len(self.eps)} ε values but {len(self.accuracy)} accuracies")

    def at(self, eps: float) -> float | None:
        for e, a in zip(self.eps, self.accuracy):
            if abs(e - eps) <= 1e-9:
                return a
        return None


@dataclass(frozen=True)
class Flag:
    code: str
    message: str


@dataclass(frozen=True)
class SanityReport:
    flags: tuple[Flag, ...]
    skipped: tuple[str, ...]  # checks that could not run, and why

    @property
    def ok(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, list]:
        """Plain JSON-able form: the flags' codes and messages, and the checks not run."""
        return {
            "flags": [{"code": f.code, "message": f.message} for f in self.flags],
            "not_checked": list(self.skipped),
        }

    def lines(self) -> list[str]:
        """Human-readable: every flag, then every skipped check; 'no flags' when clean."""
        out = [f"⚠ {f.message}" for f in self.flags] or ["sanity checks: no flags"]
        return out + [f"not checked: {s}" for s in self.skipped]


def tolerance(samples: int) -> float:
    return 1.0 / samples if samples > 0 else 0.005


def _tol(*records: AttackRecord) -> float:
    return max(tolerance(r.samples) for r in records)


def check_monotone(record: AttackRecord) -> list[Flag]:
    """Accuracy must not rise with ε."""
    pairs = sorted(zip(record.eps, record.accuracy))
    tol = _tol(record)
    return [
        Flag(ACCURACY_RISES, f"{record.attack}: accuracy rises with ε, {a:.1%} at ε={e:g} → {b:.1%} at ε={f:g}")
        for (e, a), (f, b) in itertools.pairwise(pairs)
        if b > a + tol
    ]


def _common_eps(a: AttackRecord, b: AttackRecord) -> Iterable[tuple[float, float, float]]:
    """(ε, accuracy under a, accuracy under b) at every ε > 0 both measured, when both ran on the
    same images. Subsets are seeded and drawn by count, so the same number of images is the same
    images; records on different sets (the whole test set against a 2000-image subset) are not
    compared: their clean accuracies already differ by more than the tolerance."""
    if a.samples != b.samples:
        return
    for e, acc in zip(a.eps, a.accuracy):
        other = b.at(e)
        if e > 0 and other is not None:
            yield e, acc, other


def check_iterative_vs_fgsm(records: Sequence[AttackRecord]) -> tuple[list[Flag], bool]:
    """An iterative L∞ attack must not leave more images correct than FGSM at equal ε.
    Returns (flags, whether any pair could be compared)."""
    fgsm = [r for r in records if r.kind == SINGLE_STEP and r.norm == LINF]
    iterative = [r for r in records if r.kind in WHITE_BOX_ITERATIVE and r.norm == LINF]
    flags, compared = [], False
    for f in fgsm:
        for r in iterative:
            for e, acc, fgsm_acc in _common_eps(r, f):
                compared = True
                if acc > fgsm_acc + _tol(r, f):
                    flags.append(
                        Flag(
                            ITERATIVE_ABOVE_FGSM,
                            f"{r.attack} leaves {acc:.1%} correct at ε={e:g}, more than FGSM's {fgsm_acc:.1%}",
                        )
                    )
    return flags, compared


def check_black_box(records: Sequence[AttackRecord]) -> tuple[list[Flag], bool]:
    """A black-box attack must not beat the white-box iterative ones at equal ε and norm, neither
    as a separate record nor as a later part of an ensemble (where it only attacks the images
    the white-box parts left correct, so any image it breaks is one they missed)."""
    flags, compared = [], False
    black = [r for r in records if r.kind == BLACK_BOX]
    white = [r for r in records if r.kind in WHITE_BOX_ITERATIVE]
    for b in black:
        for w in white:
            if w.norm != b.norm:
                continue
            for e, acc, white_acc in _common_eps(b, w):
                compared = True
                if acc < white_acc - _tol(b, w):
                    flags.append(
                        Flag(
                            BLACK_BOX_WINS,
                            f"black-box {b.attack} leaves {acc:.1%} correct at ε={e:g}, "
                            f"fewer than white-box {w.attack}'s {white_acc:.1%}: "
                            "gradients may be masked",
                        )
                    )
    for r in records:
        before: Component | None = None
        for part in r.components:
            if part.kind == BLACK_BOX and before is not None and before.kind in WHITE_BOX_ITERATIVE:
                compared = True
                for e, was, now in zip(r.eps, before.accuracy, part.accuracy):
                    if e > 0 and now < was - _tol(r):
                        flags.append(
                            Flag(
                                BLACK_BOX_WINS,
                                f"{r.attack}: black-box {part.attack} broke "
                                f"{was - now:.1%} of the images the white-box parts "
                                f"left correct at ε={e:g}: gradients may be masked",
                            )
                        )
            before = part
    return flags, compared


def check_large_eps(records: Sequence[AttackRecord], dataset: str | None) -> tuple[list[Flag], str | None]:
    """The strongest white-box L∞ attack measured at ε ≥ the data set's large ε must leave at most
    10 % correct. Returns (flags, why it was skipped or None)."""
    large = LARGE_EPS.get(dataset or "")
    if large is None or dataset is None:
        stated = ", ".join(sorted(LARGE_EPS))
        return [], f"large-ε accuracy: no large ε is stated for data set {dataset!r} (only for {stated})"
    best: dict[float, tuple[float, str]] = {}
    for r in records:
        if r.norm != LINF or r.kind == BLACK_BOX:
            continue
        for e, a in zip(r.eps, r.accuracy):
            if e >= large - 1e-9 and (e not in best or a < best[e][0]):
                best[e] = (a, r.attack)
    if not best:
        return [], f"large-ε accuracy: no white-box L∞ attack at ε ≥ {large:g}"
    clean = [a for r in records for e, a in zip(r.eps, r.accuracy) if e == 0]
    chance = 1.0 / DATASETS[dataset].classes
    if clean and max(clean) <= AT_CHANCE * chance:
        return [], (
            f"large-ε accuracy: the clean accuracy {max(clean):.1%} is at chance ({chance:.0%} for "
            f"{DATASETS[dataset].classes} classes): the model has learned nothing to attack"
        )
    return [
        Flag(
            HIGH_AT_LARGE_EPS,
            f"{attack} leaves {a:.1%} correct at ε={e:g} (> {LARGE_EPS_MAX_ACCURACY:.0%} "
            f"expected at most for {dataset}): the attack fails or gradients are masked",
        )
        for e, (a, attack) in sorted(best.items())
        if a > LARGE_EPS_MAX_ACCURACY
    ], None


def sanity_report(records: Sequence[AttackRecord], dataset: str | None) -> SanityReport:
    """All checks over the records of one model (one checkpoint, or one comparison row)."""
    flags: list[Flag] = []
    skipped: list[str] = []
    for r in records:
        flags += check_monotone(r)
    found, compared = check_iterative_vs_fgsm(records)
    flags += found
    if not compared:
        skipped.append("iterative vs FGSM: no FGSM and iterative L∞ attack at a common ε > 0 on the same images")
    found, compared = check_black_box(records)
    flags += found
    if not compared:
        skipped.append("black-box vs white-box: no Square attack next to a white-box iterative one on the same images")
    found, why = check_large_eps(records, dataset)
    flags += found
    if why:
        skipped.append(why)
    return SanityReport(tuple(flags), tuple(skipped))
