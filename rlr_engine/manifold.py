"""The geometric operations CondLR composes. Every function accepts a batch (..., m, r)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def project_orthogonal_complement(U: Tensor, G: Tensor) -> Tensor:
    """(I − U Uᵀ) G, the part of G orthogonal to the column space of U, computed as
    G − U (Uᵀ G) without forming the m×m projector.

    This is the direction CondLR (and its reference code) moves U along. It is not the
    Stiefel tangent projection G − U·sym(UᵀG) (as in geoopt): it drops the in-span part
    U·skew(UᵀG) on purpose, because a rotation within span(U) is a change of the core S,
    which takes its own gradient step (as in dynamical low-rank training)."""
    return G - U @ (U.mT @ G)


def retract_qr(X: Tensor) -> Tensor:
    """qf(X): the Q of the reduced QR of X with column signs fixed so that diag(R) > 0.

    The sign fix makes qf unique and continuous, so qf(U) = U for an orthonormal U."""
    Q, R = torch.linalg.qr(X)
    signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return Q * signs.unsqueeze(-2)


def retract_cholesky_qr(X: Tensor) -> Tensor:
    """qf(X) by CholeskyQR2: R₁ = chol(XᵀX), Q₁ = X R₁⁻¹, R₂ = chol(Q₁ᵀQ₁), Q = Q₁ R₂⁻¹.

    R₂R₁ is upper triangular with a positive diagonal, so Q is the same qf(X) as retract_qr up
    to rounding (‖QᵀQ − I‖ ~ u after the second pass while κ(X) ≲ u^{-1/2}). It is made of
    matrix products, two r×r Cholesky factorisations and triangular solves: all batched on an
    accelerator, and ``cholesky_ex`` reports failure in a tensor instead of synchronising to
    raise. Where the first Gram matrix is not numerically positive definite (κ(X) ≳ u^{-1/2},
    i.e. a diverging step), the first pass uses the shifted Gram matrix XᵀX + s·I with
    s = 11(mr + r(r+1))·u·‖X‖²_F (shifted CholeskyQR, Fukaya et al. 2020), chosen with
    torch.where on the device (so is a pivot below the rounding noise, which cholesky_ex does
    not flag). The result then spans the same space and is finite but only roughly orthonormal
    (‖QᵀQ − I‖ = 0.12 at κ(X) = 2·10⁴ in float32); the next step's retraction restores full
    precision.
    """
    m, r = X.shape[-2], X.shape[-1]
    G = X.mT @ X
    R, info = torch.linalg.cholesky_ex(G, upper=True)
    u = torch.finfo(X.dtype).eps
    shift = 11 * (m * r + r * (r + 1)) * u * G.diagonal(dim1=-2, dim2=-1).sum(-1)
    eye = torch.eye(r, dtype=X.dtype, device=X.device)
    R_shifted, _ = torch.linalg.cholesky_ex(G + shift[..., None, None] * eye, upper=True)
    # Cholesky may also "succeed" with a pivot below the rounding noise of G: as bad as failing.
    unreliable = (info > 0) | (R.diagonal(dim1=-2, dim2=-1).square().amin(-1) < shift)
    R = torch.where(unreliable[..., None, None], R_shifted, R)
    Q = torch.linalg.solve_triangular(R, X, upper=True, left=False)
    R, _ = torch.linalg.cholesky_ex(Q.mT @ Q, upper=True)
    return torch.linalg.solve_triangular(R, Q, upper=True, left=False)


def conditioning_bounds(tau: float) -> float:
    """δ = τ / (2 + τ): clamping σ into [m(1−δ), m(1+δ)] gives κ ≤ (1+δ)/(1−δ) = 1 + τ."""
    return tau / (2.0 + tau)


def project_condition(S: Tensor, tau: float, reference_compat: bool = False) -> tuple[Tensor, Tensor]:
    """Project the core S onto {κ(S) ≤ 1 + τ}; return (projected S, its singular values).

    S = P diag(σ) Qᵀ, m = mean(σ), δ = τ/(2+τ), σ_i ← clamp(σ_i, m(1−δ), m(1+δ)).
    τ = 0 gives α·P Qᵀ with α = sqrt(mean σ²), the nearest scaled orthogonal matrix (polar
    factor); with reference_compat it is α·qf(S) as in the paper's public code.
    τ = ∞ returns S unchanged (the singular values are still returned).
    """
    if math.isinf(tau):
        return S, torch.linalg.svdvals(S)
    P, sigma, Qh = torch.linalg.svd(S)
    if tau == 0.0:
        alpha = sigma.square().mean(dim=-1, keepdim=True).sqrt()
        orthogonal = retract_qr(S) if reference_compat else P @ Qh
        return alpha.unsqueeze(-1) * orthogonal, alpha.expand_as(sigma)
    delta = conditioning_bounds(tau)
    center = sigma.mean(dim=-1, keepdim=True)
    clamped = torch.minimum(torch.maximum(sigma, center * (1.0 - delta)), center * (1.0 + delta))
    return (P * clamped.unsqueeze(-2)) @ Qh, clamped


def truncation_rank(sigma: Tensor, theta: float, min_rank: int = 1) -> int:
    """Smallest r' ≥ min_rank with sqrt(Σ_{i>r'} σ_i²) ≤ θ ‖σ‖₂ (σ sorted descending).

    Reads the spectrum on the host: the new rank decides tensor shapes."""
    energy = sigma.double().square()
    tail = energy.flip(0).cumsum(0).flip(0)  # tail[i] = Σ_{j≥i} σ_j²
    tail = torch.cat([tail, tail.new_zeros(1)])  # tail[r'] = what dropping from index r' discards
    ok = tail.sqrt() <= theta * energy.sum().sqrt() * (1 + 1e-12)
    first = int(torch.nonzero(ok)[0])
    return int(min(max(first, min_rank), sigma.numel()))
