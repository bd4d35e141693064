"""Spectral functions of small square matrices made only of matrix products, ``inv_ex`` and
elementwise operations, with fixed iteration counts: nothing here reads a tensor on the host, so
on an accelerator nothing waits for the device.

They exist because ``torch.linalg.svd`` and ``torch.linalg.eigh`` check their solver's status on
the host after every call — a synchronisation on CUDA — and an optimizer that calls them per layer
per step stalls the GPU. ``inv_ex`` (like ``cholesky_ex``) reports failure in a tensor instead:
on CUDA it "synchronizes only when check_errors=True" (PyTorch's documentation of it).
The Newton iterations are scaled by numbers fixed in advance for a stated range of singular values,
so their step count is fixed and derived from that range (``newton_bound``). Run them in float64: the
first Newton step inverts matrices that may be nearly singular (see ``polar``).

Every function accepts a batch (..., n, n).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

# Newton steps for a polar factor, every one scaled by a number fixed in advance (see
# ``newton_scalings``): for singular values of the start X₀ (unit Frobenius norm) in [u², 1] (κ up
# to 1/u² ≈ 2·10³¹ in float64, far past singular to working precision) the iterate reaches the
# polar factor to rounding after 10 steps (``newton_bound(u², 10)`` = 0); 9 leave 9·10⁻¹⁵, 8 leave
# 3·10⁻⁷.
NEWTON_STEPS = 10
# |Z| of a symmetric Z needs only eigenvalues above ABSOLUTE_LOWER·u·‖Z‖_F resolved: a smaller one
# is off by at most its own size whatever the iteration does with it (see ``absolute_value``),
# so the scalings cover [128u, 1]: 8 steps in float64, 6 in float32 (``newton_steps``).
ABSOLUTE_LOWER = 128.0


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


@functools.lru_cache(maxsize=8)
def newton_scalings(lower: float, steps: int) -> tuple[float, ...]:
    """The scalings μ_k of Newton's polar iteration for singular values known to lie in
    [lower, 1] (Byers and Xu's scaling for a known interval): μ_k = (a_k b_k)^-½ maps [a_k, b_k]
    onto [1, b_{k+1}], b_{k+1} = ((b_k/a_k)^½ + (a_k/b_k)^½)/2, a_{k+1} = 1, starting from
    [lower, 1]. b_k → 1 quadratically once near it, and b_k − 1 bounds the distance of every
    singular value of the k-th iterate from 1 (``newton_bound``). Pure numbers: a step reads no
    norm on the device."""
    scalings, low, high = [], lower, 1.0
    for _ in range(steps):
        scalings.append(1.0 / math.sqrt(low * high))
        low, high = 1.0, 0.5 * (math.sqrt(high / low) + math.sqrt(low / high))
    return tuple(scalings)


def newton_bound(lower: float, steps: int) -> float:
    """max |s − 1| over the singular values s of the ``steps``-th scaled Newton iterate, for
    singular values of the (Frobenius-normalised) input in [lower, 1]."""
    high = 1.0 / lower
    for _ in range(steps):
        high = 0.5 * (math.sqrt(high) + 1.0 / math.sqrt(high))
    return high - 1.0


def newton_steps(lower: float, unit: float) -> int:
    """The fewest steps after which ``newton_bound(lower, ·)`` is at most ``unit``."""
    steps = 0
    while newton_bound(lower, steps) > unit:
        steps += 1
    return steps


def _newton(A: Tensor, transpose: bool, lower: float, steps: int) -> tuple[Tensor, float]:
    """``steps`` scaled Newton steps from X₀ = A/‖A‖_F + sI, s = n·u, carried as Y_k = c_k X_k
    (see ``polar``); returns (Y_K, c_K)."""
    size = A.shape[-1]
    Y = torch.add(A / _frobenius(A), identity(size, A.dtype, A.device), alpha=size * torch.finfo(A.dtype).eps)
    scale = 1.0
    for mu in newton_scalings(lower, steps):
        inverse, _ = torch.linalg.inv_ex(Y)
        Y = torch.add(Y, inverse.mT if transpose else inverse, alpha=(scale / mu) ** 2)
        scale *= 2.0 / mu
    return Y, scale


def polar(A: Tensor, steps: int = NEWTON_STEPS) -> tuple[Tensor, Tensor]:
    """The polar decomposition A = O H: O orthogonal (O = P Qᵀ for A = P Σ Qᵀ), H = Q Σ Qᵀ
    symmetric positive semidefinite, by Newton's iteration with scalings fixed in advance:

        X₀ = A/‖A‖_F + sI,  X_{k+1} = (μ_k X_k + μ_k⁻¹ X_k⁻ᵀ) / 2,  μ_k = ``newton_scalings(ℓ, steps)``,

    s = n·u, ℓ = u², u the unit roundoff; O = X_K and H = sym(Oᵀ A). Where this differs from the
    textbook on purpose:

    * The textbook scales by μ_k = (‖X_k⁻¹‖_F / ‖X_k‖_F)^½ measured on every iterate. Here X₀'s
      singular values lie in [σ_min(X₀), 1 + s] and the scalings are those optimal for [ℓ, 1]:
      every singular value ≥ ℓ is within ``newton_bound(ℓ, k)`` of 1 after k steps — 0 after 10 in
      float64 — so no step reads a norm, and the iteration is one fixed sequence of kernels for
      any A. It is carried as Y_k = c_k X_k (c₀ = 1, c_{k+1} = 2c_k/μ_k):
      Y_{k+1} = Y_k + (c_k/μ_k)² Y_k⁻ᵀ, one inverse and one addition per step, X = Y_K/c_K.
    * The iteration starts from A/‖A‖_F + sI, not A: a perturbation of relative size n·u, the
      order of the SVD's own backward error, so O is as accurate as the SVD path's (≈ n·u·κ(A)).
      It moves an exactly singular A — a rank-deficient core — off singularity (the polar
      factor of a singular A is not unique, and O is one of them), and H is formed from A
      itself. Only A = 0 (or an A/‖A‖_F with an eigenvalue exactly −s) stays singular: O and H
      then hold non-finite entries, which callers check for.
    """
    Y, scale = _newton(A, True, torch.finfo(A.dtype).eps ** 2, steps)
    X = Y * (1.0 / scale)
    return X, _symmetrise(X.mT @ A)


def absolute_value(Z: Tensor) -> Tensor:
    """|Z| = (Z²)^½ of a symmetric Z, as sym(sign(Z₀) Z) with sign(Z₀) from ``polar``'s scaled
    Newton iteration from Z₀ = Z/‖Z‖_F + sI (for a symmetric iterate X⁻ᵀ = X⁻¹), scaled for
    eigenvalues of Z₀ in [ℓ, 1], ℓ = 128u, instead of [u², 1]: 8 steps in float64 instead of 10.

    Neither the shift nor the narrower interval costs |Z| accuracy beyond rounding: an eigenvalue
    z of Z gets |z| if sign(z + s‖Z‖_F) = sign(z) and −|z| otherwise, so only eigenvalues in
    (−s‖Z‖_F, 0) change, by at most 2s‖Z‖_F; and an eigenvalue t of Z₀ below ℓ, whose sign the
    iteration leaves unresolved (a factor up to about ℓ/t instead of 1), contributes at most about
    t·ℓ/t = ℓ to |Z|/‖Z‖_F. Only Z = 0, or a Z with an eigenvalue exactly −s‖Z‖_F, gives
    non-finite entries, which callers check for.
    """
    lower = ABSOLUTE_LOWER * torch.finfo(Z.dtype).eps
    Y, scale = _newton(Z, False, lower, newton_steps(lower, torch.finfo(Z.dtype).eps))
    product = Y @ Z  # the iteration is stable: rounding's asymmetry in Y does not grow
    return (0.5 / scale) * (product + product.mT)


@functools.lru_cache(maxsize=32)
def power_schedule(size: int, dtype: torch.dtype, tolerance: float) -> tuple[int, ...]:
    """The exponents p_1, …, p_K (powers of two) of ``extreme_eigenvalue_semidefinite``'s rounds
    for size×size matrices in ``dtype``: the fewest squarings that bring its shortfall bound
    (n − 1)/(e·N), N = p_1⋯p_K, to at most ``tolerance``, in as few rounds as underflow allows.

    A round raises B (‖B‖_F = 1, so λ_max(B) ≥ n^-½) to the power p, and the next round's
    ‖B^p‖_F sums squares of entries of size ≥ λ_max(B)^p/n ≥ n^-(p/2+1); that square stays a
    normal number while p ≤ ln(1/tiny)/ln(n) − 2 (tiny: the dtype's smallest normal number) —
    128 for n = 100 in float64, 16 in float32. Smaller p for larger n, so the bound holds for any
    core size."""
    if size < 2:
        return ()  # one eigenvalue: A itself is exact
    squarings = max(1, math.ceil(math.log2((size - 1) / (math.e * tolerance))))
    per_round = max(1, math.floor(math.log2(-math.log(torch.finfo(dtype).tiny) / math.log(size) - 2)))
    rounds = math.ceil(squarings / per_round)
    # the squarings spread evenly over the rounds: the first ``squarings % rounds`` get one more
    base, extra = divmod(squarings, rounds)
    return tuple(2 ** (base + (i < extra)) for i in range(rounds))


def extreme_eigenvalue_semidefinite(A: Tensor, tolerance: float) -> Tensor:
    """The eigenvalue of largest magnitude of a symmetric semidefinite A — λ_max for A ⪰ 0, λ_min
    for A ⪯ 0 — by repeated powering:

        B₀ = A,  B_k = (B_{k−1} / ‖B_{k−1}‖_F)^{p_k},  so  B_K ∝ A^N  with N = p_1⋯p_K (even: B_K ⪰ 0),

    a combination of A's eigenprojectors with weights w_i ∝ λ_i^N = |λ_i|^N, and the Rayleigh
    quotient tr(A B_K) / tr(B_K) = Σ w_i λ_i / Σ w_i falls short of the extreme eigenvalue (in
    magnitude) by at most (n − 1)|λ| / (e N) ≤ ``tolerance``·|λ| (``power_schedule`` picks the
    p_k): unlike power iteration this needs no gap between the top eigenvalues. Each round is one
    ``matrix_power`` of log₂ p_k squarings; the count depends only on n, the dtype and
    ``tolerance``. A = 0 gives 0.
    """
    B = A
    for power in power_schedule(A.shape[-1], A.dtype, tolerance):
        B = torch.linalg.matrix_power(B / _frobenius(B), power)
    estimate = (A * B).sum((-2, -1)) / trace(B)
    return torch.nan_to_num(estimate, nan=0.0)  # A = 0: 0/0 from the first round
