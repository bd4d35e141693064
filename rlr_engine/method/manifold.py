"""The geometric operations CondLR composes. Every function accepts a batch (..., m, r), except
``project_cores``, which takes a list of square cores of any ranks."""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from rlr_engine.method.matrix_functions import absolute_value, extreme_eigenvalue_semidefinite, identity, polar, trace
from rlr_engine.method.padding import BlockIndex

RETRACTIONS = ("householder", "cholesky-qr2")
CORE_PROJECTIONS = ("svd", "newton")


def runs_on_host(device: torch.device) -> bool:
    """Whether tensors on ``device`` are computed by the CPU, which picks the first of RETRACTIONS
    and CORE_PROJECTIONS (LAPACK's, the fastest there); every other device picks the second,
    which never synchronises with the host."""
    return device.type == "cpu"


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


def retract_cholesky_qr(X: Tensor, out: Tensor | None = None) -> Tensor:
    """qf(X) by shifted CholeskyQR3 (Fukaya et al. 2020): one shifted pass, then CholeskyQR2,

        R₁ = chol(XᵀX + s·I), Q₁ = X R₁⁻¹,  then twice  R = chol(QᵀQ), Q ← Q R⁻¹,

    with s = 11(mr + r(r+1))·u·‖X‖²_F (X m×r, unit roundoff u). The product of the three R is
    upper triangular with a positive diagonal, so Q = X (R₃R₂R₁)⁻¹ is the same qf(X) as
    retract_qr up to rounding, whatever the shift. The shift makes the first Cholesky succeed
    for any X with κ(X) ≲ u⁻¹ (plain CholeskyQR fails from κ(X) ≈ u^-½, e.g. on a diverging
    step) and leaves κ(Q₁) ≲ u^-½, so the two plain passes bring ‖QᵀQ − I‖ to ~u. Two passes are
    needed: the shift is large against small singular values (s ≈ 0.6·σ_max² for a 4608×103
    factor in float32), so Q₁ is hardly better conditioned than X, and one pass left
    ‖QᵀQ − I‖ = 3·10⁻⁵ at κ(X) = 100 (float32), against 4·10⁻⁷ with two. Beyond κ(X) ≈ u⁻¹ Q is
    finite and spans the same space but is only roughly orthonormal (0.12 at κ(X) = 2·10⁴ in
    float32 was measured with the former conditional shift); the next step's retraction restores
    full precision. Nothing here branches on values: matrix products, ``cholesky_ex`` (which
    reports failure in a tensor instead of synchronising to raise) and triangular solves, all
    batched on an accelerator — nine kernels, against the eleven of choosing between a plain and a
    shifted first pass on the device.

    ``out``: where to write Q (the shape of X).
    """
    m, r = X.shape[-2], X.shape[-1]
    G = X.mT @ X
    shift = (11 * (m * r + r * (r + 1)) * torch.finfo(X.dtype).eps) * trace(G)
    G.diagonal(dim1=-2, dim2=-1).add_(shift.unsqueeze(-1))
    R, _ = torch.linalg.cholesky_ex(G, upper=True)
    Q = torch.linalg.solve_triangular(R, X, upper=True, left=False)
    R, _ = torch.linalg.cholesky_ex(Q.mT @ Q, upper=True)
    Q = torch.linalg.solve_triangular(R, Q, upper=True, left=False)
    R, _ = torch.linalg.cholesky_ex(Q.mT @ Q, upper=True)
    return torch.linalg.solve_triangular(R, Q, upper=True, left=False, out=out)


class PaddedFactors:
    """Factors of different shapes X_i (m_i × r_i) as one batch (N, M, R), R = max r_i,
    M = max(m_i + R − r_i), so that one chain of batched kernels steps them all.

    Entry i holds X_i in its block [:m_i, :r_i], the identity in [m_i : m_i + R − r_i, r_i:] and
    zeros elsewhere: up to zero rows it is block-diag(X_i, I). Every operation of the step keeps
    the blocks apart — (I − P Pᵀ) G of such a P and a G zero outside X_i's block is zero outside it,
    and qf(block-diag(X, I)) = block-diag(qf(X), I) — so entry i's block is what the step computes
    for X_i alone, up to rounding (the CholeskyQR shift is taken over the whole entry). The zero
    rows cost arithmetic (a 512×13 factor padded to 4608×103 does 70× the work of its own) but no
    kernel launches; where launches dominate (small layers on a GPU) that is the trade wanted.

    One buffer (2, N, M, R) holds the factors (``factors``, slot 0) and their moments
    (``moments``, slot 1, zero outside the blocks); the retraction writes its result over the
    factors — block-diagonal exactly (the Gram matrix of a block-diagonal entry is
    block-diagonal, and so are its Cholesky factors), the identity block orthonormal again to
    rounding. ``blocks`` (padding.BlockIndex) copies factors then moments in and out, a fixed
    number of kernels for any number of layers. The buffer is allocated once per set of shapes.

    Args:
        shapes: (m_i, r_i) of every factor, in batch order.
        dtype, device: those of the factors.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], dtype: torch.dtype, device: torch.device) -> None:
        self.shapes = tuple(shapes)
        rank = max(r for _, r in self.shapes)
        rows = max(m + rank - r for m, r in self.shapes)
        self.buffer = torch.zeros((2, len(self.shapes), rows, rank), dtype=dtype, device=device)
        self.factors, self.moments = self.buffer[0], self.buffer[1]
        for i, (m, r) in enumerate(self.shapes):
            if r < rank:
                self.factors[i, m : m + rank - r, r:].fill_diagonal_(1.0)
        self.blocks = BlockIndex(self.shapes, (rows, rank), 2, device)

    def factor_blocks(self) -> list[Tensor]:
        """Views of the live blocks of the factors (for inspection; copies go through ``blocks``)."""
        return [self.factors[i, :m, :r] for i, (m, r) in enumerate(self.shapes)]


def conditioning_bounds(tau: float) -> float:
    """δ = τ / (2 + τ): clamping σ into [m(1−δ), m(1+δ)] gives κ ≤ (1+δ)/(1−δ) = 1 + τ."""
    return tau / (2.0 + tau)


def project_condition(
    S: Tensor, tau: float, reference_compat: bool = False, method: str = "svd"
) -> tuple[Tensor, Tensor | None]:
    """Project the cores S (..., r, r) onto {κ(S) ≤ 1 + τ}; return (projected S, (σ_min/σ_max)²
    of each projected core) — at τ = ∞, (S unchanged, None).

    S = P diag(σ) Qᵀ, m = mean(σ), δ = τ/(2+τ), σ_i ← clamp(σ_i, m(1−δ), m(1+δ)).
    τ = 0 gives α·P Qᵀ with α = sqrt(mean σ²), the nearest scaled orthogonal matrix (polar
    factor); with reference_compat it is α·qf(S) as in the paper's public code.

    ``method`` "svd" computes it from ``torch.linalg.svd``; "newton" computes the same matrix
    without any host synchronisation (see ``project_cores``), for accelerators.
    """
    if method not in CORE_PROJECTIONS:
        raise ValueError(f"method must be one of {CORE_PROJECTIONS}, got {method!r}")
    if math.isinf(tau):
        return S, None
    if method == "newton":
        work = S.to(newton_dtype(S.device))
        layout = _Layout(None, None, 1.0 / S.shape[-1], 1.0 / math.sqrt(S.shape[-1]))
        projected, ratio = _project_condition_newton(work, layout, tau, reference_compat, torch.finfo(S.dtype).eps)
        return projected.to(S.dtype), ratio.to(S.dtype)
    P, sigma, Qh = torch.linalg.svd(S)
    if tau == 0.0:
        alpha = sigma.square().mean(dim=-1, keepdim=True).sqrt()
        orthogonal = retract_qr(S) if reference_compat else P @ Qh
        return alpha.unsqueeze(-1) * orthogonal, torch.ones_like(sigma[..., 0])
    delta = conditioning_bounds(tau)
    center = sigma.mean(dim=-1, keepdim=True)
    clamped = torch.minimum(torch.maximum(sigma, center * (1.0 - delta)), center * (1.0 + delta))
    largest = clamped[..., 0]
    # S = 0 clamps to 0: ratio 1, as on the Newton path, not 0/0
    ratio = torch.where(largest > 0, clamped[..., -1] / largest.clamp_min(torch.finfo(S.dtype).tiny), 1.0)
    return (P * clamped.unsqueeze(-2)) @ Qh, ratio.square()


def project_cores(
    cores: Sequence[Tensor], tau: float, reference_compat: bool = False, method: str = "svd"
) -> list[tuple[Tensor, Tensor | None]]:
    """``project_condition`` of every core in a list of square cores of any ranks, in as few
    batched calls as the method allows: "svd" makes one call per distinct rank, "newton" a single
    call for all of them (see PaddedCores)."""
    if math.isinf(tau) or not cores:
        unchanged: list[tuple[Tensor, Tensor | None]] = [(S, None) for S in cores]
        return unchanged
    if method == "newton":
        return _project_padded(cores, tau, reference_compat)
    return _project_by_rank(cores, tau, reference_compat, method)


def _project_by_rank(
    cores: Sequence[Tensor], tau: float, reference_compat: bool, method: str
) -> list[tuple[Tensor, Tensor | None]]:
    results: list[tuple[Tensor, Tensor | None]] = [(core, None) for core in cores]
    by_rank: dict[int, list[int]] = defaultdict(list)
    for i, S in enumerate(cores):
        by_rank[S.shape[-1]].append(i)
    for idx in by_rank.values():
        projected, ratio = project_condition(torch.stack([cores[i] for i in idx]), tau, reference_compat, method)
        assert ratio is not None  # τ is finite here
        for j, i in enumerate(idx):
            results[i] = (projected[j], ratio[j])
    return results


def _project_padded(cores: Sequence[Tensor], tau: float, reference_compat: bool) -> list[tuple[Tensor, Tensor | None]]:
    """Every core in one PaddedCores batch, the results cast back to the cores' dtype."""
    batch = PaddedCores(tuple(S.shape[-1] for S in cores), cores[0].dtype, cores[0].device)
    projected, ratio = batch.project(cores, tau, reference_compat)
    projected, ratio = projected.to(cores[0].dtype), ratio.to(cores[0].dtype)
    return [(projected[i, :r, :r], ratio[i]) for i, r in enumerate(batch.ranks)]


class PaddedCores:
    """Square cores S_i of ranks r_i as one batch (N, R, R) at the largest rank R, in the Newton
    iterations' dtype (float64 where the device has it), each padded to block-diag(S_i, c I)
    with c chosen so that the padding leaves S_i's block of every intermediate — polar factor,
    clamp, extreme singular values — as it would be alone (see _project_condition_newton).

    The zero-padded buffer is allocated once per set of ranks (CondLR keeps one while the ranks
    hold); ``blocks`` (padding.BlockIndex) copies the cores in and the projected blocks out, a
    fixed number of kernels whatever the number of cores.

    Args:
        ranks: r_i of every core, in batch order.
        dtype, device: those of the cores; ``dtype`` also sets the accuracy asked of
            (σ_min/σ_max)² (its unit roundoff).
    """

    def __init__(self, ranks: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.ranks, self.dtype = ranks, dtype
        size, work = max(ranks), newton_dtype(device)
        self.buffer = torch.zeros((len(ranks), size, size), dtype=work, device=device)
        self.layout = _layout(ranks, device, work)
        self.blocks = BlockIndex([(r, r) for r in ranks], (size, size), 1, device)

    def project(
        self, cores: Sequence[Tensor], tau: float, reference_compat: bool, bound_factors: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(the projected batch, (σ_min/σ_max)² per core), both in the Newton dtype; the
        projected blocks go back into cores with ``blocks.unload``. τ is finite. ``bound_factors``:
        (1 − δ, 1 + δ) of τ held in a tensor (device_hyperparameters), in the Newton dtype; by
        default made from τ."""
        self.blocks.load(self.buffer, cores)
        tolerance = torch.finfo(self.dtype).eps
        return _project_condition_newton(self.buffer, self.layout, tau, reference_compat, tolerance, bound_factors)


class _Layout(NamedTuple):
    """Where each core of a padded batch sits: ``padding`` the diagonal matrices with ones at
    the padded indices (None where nothing is padded), and per core (R − r)/r, 1/r and r^-½."""

    padding: Tensor | None
    padded_per_rank: Tensor | None
    inverse_rank: Tensor | float
    inverse_root_rank: Tensor | float


@functools.lru_cache(maxsize=16)
def _layout(ranks: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> _Layout:
    """The layout of cores of these ranks padded to the largest. Derived from the ranks alone, so
    built once per set of ranks (they change only on truncation) rather than in every step;
    callers only read it."""
    size = max(ranks)
    padding = torch.zeros((len(ranks), size, size), dtype=dtype, device=device)
    for i, rank in enumerate(ranks):
        padding[i].diagonal()[rank:] = 1.0
    rank_of = _filled(ranks, dtype, device)[:, None, None]
    return _Layout(padding, (size - rank_of) / rank_of, 1.0 / rank_of, rank_of.rsqrt())


@functools.lru_cache(maxsize=16)
def _bound_factors(delta: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(1 − δ, 1 + δ): the lower and the upper clamp bound's multiples of m, to be stacked in
    front of a batch of cores."""
    return _filled((1.0 - delta, 1.0 + delta), dtype, device)


@functools.lru_cache(maxsize=4)
def _halves(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The row (½, −½)."""
    return _filled((0.5, -0.5), dtype, device)[None]


def _filled(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The vector of ``values``, each filled in on the device: ``torch.tensor`` of them would copy
    from host memory, which on an accelerator waits for the device to finish its queued work."""
    return torch.stack([torch.full((), value, dtype=dtype, device=device) for value in values])


def newton_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the device has it (Apple's MPS does not): the first Newton step may invert
    a matrix that is singular to working precision."""
    return torch.float32 if device.type == "mps" else torch.float64


def _project_condition_newton(
    S: Tensor,
    layout: _Layout,
    tau: float,
    reference_compat: bool,
    tolerance: float,
    bound_factors: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """project_condition from polar decompositions (``matrix_functions``), in S's dtype (float64).

    S (..., R, R) holds each core in its leading r×r block and zeros elsewhere; ``layout.padding``
    is the diagonal matrix with ones at the padded indices (None where every r = R). With c = sqrt(mean σ²)
    (the polar factor's scale, ‖S‖_F/√r):

    * X = S + c·padding = block-diag(S, c I) = O H: O = block-diag(O_S, I), H = block-diag(H_S, c I).
    * τ = 0: c·O (or c·qf(X) = block-diag(c·qf(S), c I) with reference_compat).
    * τ > 0: m = mean(σ) = (tr H − c(R − r)) / r; the padding block of H is moved to m I, which
      the clamp keeps at m, which lies between the clamped extremes (σ_max ≥ m ≥ σ_min), and
      whose shifts below are ±mδ I, never singular (c I could sit exactly at hi).
      clamp(H) = m I + (|H − lo I| − |H − hi I|)/2 with lo, hi = m(1 ∓ δ) — the scalar identity
      clamp(h) = (lo + hi)/2 + (|h − lo| − |h − hi|)/2 — with |Z| from the polar decomposition
      of the symmetric Z; the projection is O clamp(H). Its extreme singular values are lo plus
      λ_max(clamp(H) − lo I) and hi minus λ_max(hi I − clamp(H)), both positive semidefinite.

    Singular matrices (a rank-deficient S, an eigenvalue of H exactly on lo or hi) are handled by
    the shifted start of ``polar`` (and of qf with reference_compat); only S = 0 is returned as it
    came (as the SVD path does), with ratio 1.

    Accuracy: that of the SVD path (≈ u·κ(S)) for the projection; each extreme singular value to
    ``tolerance`` (relative) from the powering — the cores' own unit roundoff, not the Newton
    dtype's: the ratio only scales the next step — plus ≈ u·(1 + τ) from forming clamp(H) at the
    scale of hi.
    """
    size = S.shape[-1]
    eye = identity(size, S.dtype, S.device)
    padding = layout.padding
    rms = torch.linalg.matrix_norm(S, keepdim=True) * layout.inverse_root_rank
    X = S if padding is None else torch.addcmul(S, rms, padding)
    if tau == 0.0:
        if reference_compat:
            # qf of X/‖X‖_F + sI, s = n·u, as ``polar`` starts (qf(cX) = qf(X) for c > 0): a
            # perturbation of the SVD's backward-error size that moves a rank-deficient S off
            # singularity, where CholeskyQR meets a singular Gram matrix and its result is not
            # finite (and qf(S) is not unique anyway). qf twice: qf(qf(X)) = qf(X), and the second
            # pass restores the orthonormality that CholeskyQR2 loses on an ill-conditioned X
            # (see retract_cholesky_qr).
            start = torch.add(X / torch.linalg.matrix_norm(X, keepdim=True), eye, alpha=size * torch.finfo(S.dtype).eps)
            orthogonal = retract_cholesky_qr(retract_cholesky_qr(start))
        else:
            orthogonal = polar(X)[0]
        projected, ratio = rms * orthogonal, torch.ones_like(rms[..., 0, 0])
    else:
        orthogonal, H = polar(X)
        mean = trace(H)[..., None, None] * layout.inverse_rank
        if padding is not None and layout.padded_per_rank is not None:  # m = (tr H − c(R − r))/r
            mean = torch.addcmul(mean, rms, layout.padded_per_rank, value=-1)
            H = torch.addcmul(H, mean - rms, padding)
        # a view: the pair in front of S's batch and matrix dims
        if bound_factors is None:
            bound_factors = _bound_factors(conditioning_bounds(tau), S.dtype, S.device)
        factors = bound_factors.view((2,) + (1,) * S.dim())
        bounds = mean * factors  # (lo, hi) stacked in front
        absolute = absolute_value(torch.addcmul(H, bounds, eye, value=-1))
        # (|H − lo I| − |H − hi I|)/2 as one product with (½, −½) over the stacked pair (views in, view out)
        halves = _halves(S.dtype, S.device)
        clamped = torch.addcmul(torch.mm(halves, absolute.view(2, -1)).view(H.shape), mean, eye)
        # clamped − lo I and hi I − clamped, both positive semidefinite
        # clamped − lo I ⪰ 0 and clamped − hi I ⪯ 0: σ_max = lo + λ_max(·), σ_min = hi + λ_min(·)
        gaps = extreme_eigenvalue_semidefinite(torch.addcmul(clamped, bounds, eye, value=-1), tolerance)
        extremes = bounds[..., 0, 0] + gaps  # σ_max, σ_min
        projected, ratio = orthogonal @ clamped, (extremes[1] / extremes[0]).square()
    # x − x is 0 for a finite x and NaN otherwise; the sum is non-finite where any entry is, and
    # the ratio is finite wherever clamped (so the projection) is and S ≠ 0
    total = projected.sum((-2, -1))
    finite = (total - total) == 0
    projected = torch.where(finite[..., None, None], projected, S)
    return projected, torch.where(finite, ratio, 1.0)


# Optimizer state that holds second moments (Adam's), mapped through their square roots.
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")


def transport_core_state(key: str, value: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """The optimizer state ``value`` (named ``key``) of a core S after the change of bases
    S ↦ left·S·right that a rank change makes (truncation: left = Pᵀ, right = Q; augmentation:
    the maps of the bases): first moments map like S; second moments through their element-wise
    square roots, so they stay ≥ 0 (an approximation: Adam's moments are not equivariant)."""
    if key in SECOND_MOMENTS:
        return (left @ value.sqrt() @ right).square()
    return left @ value @ right


def truncation_rank(sigma: Tensor, theta: float, min_rank: int = 1) -> int:
    """Smallest r' ≥ min_rank with sqrt(Σ_{i>r'} σ_i²) ≤ θ ‖σ‖₂ (σ sorted descending).

    Reads the spectrum on the host: the new rank decides tensor shapes."""
    energy = sigma.double().square()
    tail = energy.flip(0).cumsum(0).flip(0)  # tail[i] = Σ_{j≥i} σ_j²
    tail = torch.cat([tail, tail.new_zeros(1)])  # tail[r'] = what dropping from index r' discards
    ok = tail.sqrt() <= theta * energy.sum().sqrt() * (1 + 1e-12)
    first = int(torch.nonzero(ok)[0])
    return int(min(max(first, min_rank), sigma.numel()))
