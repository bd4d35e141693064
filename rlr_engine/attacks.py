"""Adversarial attacks (advertorch) behind one small interface, and robustness evaluation.

All attacks work in [0, 1] pixel space: models normalise their inputs themselves.
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .names import ATTACKS
from .records import AttackSpec

__all__ = ["ATTACKS", "AttackSpec", "adversarial_accuracy", "adversarial_correct", "fgsm_batch", "pgd_batch",
           "import_advertorch"]



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
    """advertorch's L∞ or L2 PGD with a random start, clipped to [0, 1]."""
    if eps == 0:
        return x
    attacks = import_advertorch()
    cls = attacks.LinfPGDAttack if spec.name == "pgd-linf" else attacks.L2PGDAttack
    step = spec.step_size or 2.5 * eps / spec.steps
    adversary = cls(model, loss_fn=nn.CrossEntropyLoss(reduction="sum"), eps=eps, nb_iter=spec.steps,
                    eps_iter=step, rand_init=True, clip_min=0.0, clip_max=1.0, targeted=False)
    return adversary.perturb(x, y)


@torch.no_grad()
def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return (model(x).argmax(1) == y).sum()


def adversarial_accuracy(model: nn.Module, images: Tensor, labels: Tensor, spec: AttackSpec,
                         batch_size: int = 256, to_input=None) -> dict[float, float]:
    """Accuracy (fraction) under the attack at each ε; ε = 0 is the clean accuracy.

    ``images`` may be uint8 (converted with ``to_input``) or float in [0, 1]. The model is put
    in eval mode for the duration and restored afterwards."""
    correct = adversarial_correct(model, images, labels, spec, batch_size, to_input)
    n = max(len(labels), 1)
    return {e: c.item() / n for e, c in correct.items()}


def adversarial_correct(model: nn.Module, images: Tensor, labels: Tensor, spec: AttackSpec,
                        batch_size: int = 256, to_input=None) -> dict[float, Tensor]:
    """Number of images still classified correctly under the attack at each ε, as device
    tensors (counts add up across the shards of a data-parallel run)."""
    was_training = model.training
    model.eval()
    correct = {e: torch.zeros((), dtype=torch.long, device=labels.device) for e in spec.eps}
    try:
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size]
            x = to_input(x) if to_input is not None else x.float()
            y = labels[start:start + batch_size]
            if spec.name == "fgsm":
                adversarial = zip(spec.eps, fgsm_batch(model, x, y, spec.eps))
            else:
                adversarial = ((e, pgd_batch(model, x, y, e, spec)) for e in spec.eps)
            for e, x_adv in adversarial:
                correct[e] += _correct(model, x_adv, y)
    finally:
        model.train(was_training)
    return correct
