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
