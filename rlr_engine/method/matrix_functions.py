"""Spectral functions of small square matrices made only of matrix products, ``inv_ex`` and
elementwise operations, with fixed iteration counts: nothing here reads a tensor on the host, so
on an accelerator nothing waits for the device.

They exist because ``torch.linalg.svd`` and ``torch.linalg.eigh`` check their solver's status on
the host after every call — a synchronisation on CUDA — and an optimizer that calls them per layer
per step stalls the GPU. ``inv_ex`` (like ``cholesky_ex``) reports failure in a tensor instead:
on CUDA it "synchronizes only when check_errors=True" (PyTorch's documentation of it).
The iterations converge quadratically, so a fixed count costs a few spare products where the input
is benign, and a step that has converged is a fixed point. Run them in float64: the first Newton
step inverts matrices that may be singular to working precision (see ``polar``).

Every function accepts a batch (..., n, n).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

# Newton steps for a polar factor: in float64 the iterate stops changing (to rounding) after 5
# steps at κ(A) = 2, 8 at κ = 10⁶, 9 at κ = 10¹⁴, and 9 for a symmetric A with an eigenvalue of
# 10⁻¹⁴‖A‖ (measured on 64×64 matrices, every step scaled). Only the first SCALED_STEPS are
# scaled: each cuts κ to about √κ/2 (10¹⁴ → 2 in four), after which unscaled steps converge
# quadratically and cost one inverse and one elementwise kernel instead of six.
NEWTON_STEPS, SCALED_STEPS = 10, 4
# λ_max by powers: 6 rounds of B ← (B/‖B‖_F)⁶⁴, so A^N with N = 2³⁶; the estimate falls short by
# at most n·λ_max/(e·2³⁶). A round raises B (‖B‖_F = 1, so λ_max(B) ≥ n^-½) to the 64th power in
# one call — 6 squarings inside matrix_power — and λ_max(B)⁶⁴ ≥ n⁻³² stays far above float64's
# smallest normal number for any core size.
POWER_ROUNDS, POWER_PER_ROUND = 6, 64


def _frobenius(X: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(X, keepdim=True)


def _symmetrise(X: Tensor) -> Tensor:
    return 0.5 * (X + X.mT)


def trace(X: Tensor) -> Tensor:
    return X.diagonal(dim1=-2, dim2=-1).sum(-1)


@functools.lru_cache(maxsize=32)
def identity(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The size×size identity, made once per (size, dtype, device): callers only read it, and a
    step that builds none launches nothing for it."""
    return torch.eye(size, dtype=dtype, device=device)


def polar(
    A: Tensor, symmetric: bool = False, steps: int = NEWTON_STEPS, scaled_steps: int = SCALED_STEPS
) -> tuple[Tensor, Tensor]:
    """The polar decomposition A = O H: O orthogonal (O = P Qᵀ for A = P Σ Qᵀ), H = Q Σ Qᵀ
    symmetric positive semidefinite, by Newton's iteration with Frobenius-norm scaling in the
    first ``scaled_steps`` steps (Higham, Functions of Matrices, §8.6):

        X₀ = A,  X_{k+1} = (μ_k X_k + μ_k⁻¹ X_k⁻ᵀ) / 2,  μ_k = (‖X_k⁻¹‖_F / ‖X_k‖_F)^½,

    then μ_k = 1, and H = sym(Oᵀ A). A scaled step does not depend on the scale of X_k, so all
    but the last scaled step keep the cheaper multiple X_k + μ_k⁻² X_k⁻ᵀ of the iterate. For a
    symmetric A (``symmetric=True``) the iterates are symmetric (up to rounding, removed at the
    end), X⁻ᵀ = X⁻¹, and O = sign(A), H = |A|. An eigenvalue near zero, where sign is
    ill-conditioned, costs |A| no accuracy: its error there is at most that eigenvalue's size.

    Only X₀ = A can be singular (every later iterate has singular values ≥ 1). Where ``inv_ex``
    reports A singular in floating point — a symmetric A = H − lo I whose eigenvalue sits exactly
    on lo, as when a core already clamped is projected again, or a rank-deficient core — the first
    step inverts A + sI instead, s = n·u·‖A‖_F, chosen on the device. For a symmetric A that
    changes |A| by at most 2s (only eigenvalues in (−s, 0) are affected); for a singular A the
    polar factor is not unique anyway and O is one of them. Only A = 0 stays singular: O and H
    then hold non-finite entries, which callers check for.
    """
    size = A.shape[-1]
    inverse, info = torch.linalg.inv_ex(A)
    shift = size * torch.finfo(A.dtype).eps * _frobenius(A)
    shifted, _ = torch.linalg.inv_ex(A + shift * identity(size, A.dtype, A.device))
    inverse = torch.where((info == 0)[..., None, None], inverse, shifted)
    X = A
    for step in range(steps):
        if step:
            inverse, _ = torch.linalg.inv_ex(X)
        transposed = inverse if symmetric else inverse.mT
        if step < scaled_steps - 1:  # a multiple of the next iterate: X + μ⁻² X⁻ᵀ
            X = torch.addcdiv(X, transposed, _frobenius(inverse) / _frobenius(X))
        elif step == scaled_steps - 1:  # the iterate itself, (μX + X⁻ᵀ/μ)/2, in one kernel
            scale = (_frobenius(inverse) / _frobenius(X)).sqrt()
            X = torch.addcdiv(X * (0.5 * scale), transposed, 2.0 * scale)
        else:
            X = torch.lerp(X, transposed, 0.5)
    if symmetric:  # the iteration is stable: rounding's asymmetry does not grow, so once is enough
        X = _symmetrise(X)
    return X, _symmetrise(X.mT @ A)


def largest_eigenvalue_psd(A: Tensor, rounds: int = POWER_ROUNDS) -> Tensor:
    """λ_max of a symmetric positive semidefinite A by repeated powering:

        B₀ = A,  B_{k+1} = (B_k / ‖B_k‖_F)⁶⁴,  so  B_K ∝ A^N  with N = 64^K,

    a combination of A's eigenprojectors with weights w_i ∝ λ_i^N, and the Rayleigh quotient
    tr(A B_K) / tr(B_K) = Σ w_i λ_i / Σ w_i falls short of λ_max by at most n λ_max / (e N):
    unlike power iteration this needs no gap between the top eigenvalues. A = 0 gives 0.
    """
    B = A
    for _ in range(rounds):
        B = torch.linalg.matrix_power(B / _frobenius(B), POWER_PER_ROUND)
    estimate = (A * B).sum((-2, -1)) / trace(B)
    return torch.where(torch.isfinite(estimate), estimate, 0.0)  # A = 0: 0/0 from the first round
