"""An optimizer's hyperparameters held in device tensors, for a step captured once and replayed.

A CUDA graph replays the kernels it recorded with the arguments they were launched with: a
Python number a step passes to a kernel (``alpha=-lr``, ``mul_(momentum)``) is baked into the
graph, and a new learning rate would need a new capture. A kernel that reads the number from a
tensor reads whatever that tensor holds at replay. ``DeviceHyperparameters`` keeps, per param
group, −η, μ and λ (weight decay), and τ's clamp factors (1 − δ, 1 + δ), in tensors on the
parameters' device, filled in place from the groups' Python values — which stay the one source of
truth (checkpoints, schedulers and commands change those) — before each step, outside any capture.

What the values cannot change without a new capture is their *structure* (``structure``): which
kernels run at all (μ = 0 skips the momentum, λ = 0 the decay, τ's regime picks the projection's
branch) and which groups share one call (groups of equal η or μ are stepped together).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from rlr_engine.method.manifold import conditioning_bounds

# The columns of ``DeviceHyperparameters.values``.
NEGATIVE_LR, MOMENTUM, WEIGHT_DECAY = range(3)


def capturing() -> bool:
    """Whether the current CUDA stream is recording a graph (never on a machine without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def tau_regime(tau: float) -> str:
    """ "zero", "finite" or "inf": the branch of the CondLR step τ selects."""
    return "inf" if math.isinf(tau) else "zero" if tau == 0.0 else "finite"


def _first_equal(values: Sequence[float]) -> tuple[int, ...]:
    """For each value, the index of the first equal one: which values share one call."""
    return tuple(values.index(v) for v in values)


class DeviceHyperparameters:
    """−η, μ and λ of every param group (``values``, one row per group) and τ's clamp factors
    (``bounds``), as tensors a step reads instead of Python numbers.

    ``refresh`` fills the entries whose group value changed, one ``fill_`` each (a kernel launch,
    no host synchronisation, nothing allocated), and nothing when nothing changed; the tensors are
    never replaced, so a captured step keeps reading them. A change must not happen while a graph
    is being recorded (the fill would be recorded with it and replayed over later values):
    ``refresh`` raises RuntimeError then.

    Args:
        groups: how many param groups.
        dtype: the parameters' dtype (η, μ, λ are applied in it, as Python numbers would be).
        bound_dtype: the dtype of the core projection's iterations, for (1 − δ, 1 + δ).
        device: the parameters' device.
    """

    def __init__(self, groups: int, dtype: torch.dtype, bound_dtype: torch.dtype, device: torch.device) -> None:
        self.values = torch.zeros((groups, 3), dtype=dtype, device=device)
        self.bounds = torch.ones(2, dtype=bound_dtype, device=device)
        self.device = device
        self._held: list[tuple[float, float, float] | None] = [None] * groups
        self._held_delta: float | None = None

    def refresh(self, groups: Sequence[dict], tau: float) -> None:
        """Bring the tensors to the groups' ``lr``, ``momentum``, ``weight_decay`` and to ``tau``
        (the bounds are left as they are for τ = 0 or ∞, whose branches do not read them)."""
        for row, group in enumerate(groups):
            wanted = (-float(group["lr"]), float(group["momentum"]), float(group["weight_decay"]))
            held = self._held[row]
            if wanted == held:
                continue
            self._refuse_inside_capture()
            for column, value in enumerate(wanted):
                if held is None or held[column] != value:
                    self.values[row, column].fill_(value)
            self._held[row] = wanted
        if tau != 0.0 and not math.isinf(tau):
            delta = conditioning_bounds(tau)
            if delta != self._held_delta:
                self._refuse_inside_capture()
                self.bounds[0].fill_(1.0 - delta)
                self.bounds[1].fill_(1.0 + delta)
                self._held_delta = delta

    def negative_lr(self, row: int) -> Tensor:
        """−η of group ``row``, a 0-dim view."""
        return self.values[row, NEGATIVE_LR]

    def momentum(self, row: int) -> Tensor:
        return self.values[row, MOMENTUM]

    def weight_decay(self, row: int) -> Tensor:
        return self.values[row, WEIGHT_DECAY]

    @staticmethod
    def structure(groups: Sequence[dict], tau: float) -> tuple:
        """What a step reading these tensors still decides from the values (module docstring):
        τ's regime, which groups have μ ≠ 0 and λ ≠ 0, and which share η and μ."""
        lrs = [float(g["lr"]) for g in groups]
        momenta = [float(g["momentum"]) for g in groups]
        return (
            tau_regime(tau),
            tuple(m != 0 for m in momenta),
            tuple(float(g["weight_decay"]) != 0 for g in groups),
            _first_equal(lrs),
            _first_equal(momenta),
        )

    @staticmethod
    def _refuse_inside_capture() -> None:
        if capturing():
            raise RuntimeError(
                "a hyperparameter changed while a CUDA graph was being recorded; "
                "refresh the device hyperparameters before the capture"
            )
