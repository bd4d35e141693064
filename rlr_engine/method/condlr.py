"""CondLR: SGD with momentum on low-rank layers kept orthonormal and well conditioned.

For every low-rank layer W = U S Vᵀ one step is (momentum μ, learning rate η):

1. m ← μ·m + g for U, S and V separately (PyTorch's SGD convention, dampening 0).
2. D_U = c·(I − U Uᵀ) m_U, and D_U itself, scale included, becomes U's momentum buffer, so the
   next step's momentum is μ·D_U + g (as the reference code does; storing the unscaled
   (I − U Uᵀ) m_U is a different method whenever c ≠ 1). Likewise V.
3. U ← qf(U − η·D_U), likewise V (qf: QR with diag(R) > 0).
4. S ← S − η·m_S, then S ← project_condition(S, τ), so κ(S) ≤ 1 + τ.

Step scaling c ("reference", the default, reproduces the paper's public code): for τ = 0,
c = 1/a with a the mean of all singular values of the layer's initial dense weight; for
0 < τ < ∞, c = (σ_min/σ_max)² of S after the previous projection (1 before the first); for
τ = ∞, c = 1. "alpha" uses c = 1/α², α² = ‖S‖²_F / r, which makes the step in W-space
independent of the scale of S; "none" uses c = 1. At τ = ∞ (vanilla low-rank training) every
choice uses c = 1, and a scale of zero (a = 0, S = 0) gives c = 1.

``store_scaled_direction=False`` keeps the unscaled (I − U Uᵀ) m_U as the buffer instead (the
momentum then does not carry the step scale c); it is not the reference method and is only used
when asked for. Measured on sklearn digits (digits-cnn, rank_fraction 0.2, lr 0.1, momentum 0.3,
batch 128, 300 steps, full-set loss, mean of seeds 0–2): τ = 0: 0.157 scaled vs 0.212 unscaled;
τ = 0.1: 1.03 vs 0.82; τ = 0.5: 1.22 vs 0.83.

Every other parameter takes a plain SGD-with-momentum step. Nothing in ``step`` reads a tensor
on the host. On an accelerator the defaults are also free of solvers that check their status on
the host: the retraction is shifted CholeskyQR3 over every U and V at once, padded into one batch
(``manifold.PaddedFactors``: one chain of kernels whatever the number of layers), and the core
projection is made of Newton iterations for polar decompositions (``manifold.project_cores``), so
the step never synchronises (except with
``reference_compat``, which keeps the paper's Householder QR). On the CPU they are Householder QR
and the SVD of the cores, the faster there; both pairs compute the same step up to rounding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from rlr_engine.core.catalog import STEP_SCALINGS
from rlr_engine.core.validation import check_tau, check_theta
from rlr_engine.method.device_hyperparameters import DeviceHyperparameters, tau_regime
from rlr_engine.method.lowrank import LowRankLayer, low_rank_layers
from rlr_engine.method.manifold import (
    CORE_PROJECTIONS,
    RETRACTIONS,
    PaddedCores,
    PaddedFactors,
    newton_dtype,
    project_cores,
    project_orthogonal_complement,
    retract_cholesky_qr,
    retract_qr,
    runs_on_host,
    transport_core_state,
    truncation_rank,
)


@dataclass(frozen=True)
class RankChange:
    """One layer's truncation: its name, rank before and after, and ‖W_before − W_after‖_F
    before the τ projection (the norm of the discarded singular values)."""

    layer: str
    old_rank: int
    new_rank: int
    discarded_norm: float


class CondLR(torch.optim.Optimizer):
    """Robust low-rank training (Savostianova et al., NeurIPS 2023) as a torch optimizer.

    Param groups, each with ``lr``, ``momentum``, ``weight_decay`` and ``tau``:
    ``"stiefel"`` (every U and V), ``"core"`` (every S) and ``"other"`` (the rest).
    ``tau`` is read from the core group (from the first group when the model has no low-rank
    layer); ``set_tau`` changes it everywhere.

    Args:
        model: the network; its low-rank layers (lowrank.to_low_rank) are found by walking it.
        lr: learning rate η > 0.
        momentum: μ ∈ [0, 1), PyTorch's SGD convention (dampening 0), for U, S, V and the rest.
        tau: conditioning tolerance τ ∈ [0, ∞]: κ(S) ≤ 1 + τ after every step; τ = ∞ switches
            the projection off (vanilla low-rank training on the Stiefel manifold), τ = 0 makes
            S a scaled orthogonal matrix.
        weight_decay: L2 penalty added to every gradient (U and V: before their projection).
        step_scaling: the step scale c of U and V (module docstring): "reference" (the paper's
            code, the default), "alpha" (1/α², α² = ‖S‖²_F / r) or "none" (c = 1).
        reference_compat: reproduce the reference code's arithmetic — at τ = 0 the core becomes
            α·qf(S), the QR factor, instead of the polar factor α·P Qᵀ (the textbook's nearest
            orthogonal matrix), and the retraction is Householder QR on every device.
        store_scaled_direction: store c·(I − U Uᵀ) m_U as U's momentum (True, the reference's
            method) or the unscaled (I − U Uᵀ) m_U (False; a different method whenever c ≠ 1).
        retraction: "householder" or "cholesky-qr2" (how step 3 is computed, not what); "auto"
            takes the first on the CPU and the second elsewhere, where it never synchronises
            with the host.
        core_projection: "svd" or "newton" (how step 4 is computed); "auto" as for retraction.
        capturable: read η, μ, the weight decay and τ from device tensors
            (``device_hyperparameters``) instead of passing them to kernels as Python numbers, so
            that a step captured in a CUDA graph follows later changes without a new capture
            (``capture_structure`` says what still needs one). The groups' values stay the ones
            to change; every step, and ``refresh_hyperparameters`` before a graph's replay, copies
            them over. Needs the host-free path: not with "householder", "svd" or
            ``reference_compat``. Costs one more kernel per learning rate (η·m, then p − η·m)
            and per decayed group.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        momentum: float = 0.0,
        tau: float = 0.1,
        weight_decay: float = 0.0,
        step_scaling: str = "reference",
        reference_compat: bool = False,
        store_scaled_direction: bool = True,
        retraction: str = "auto",
        core_projection: str = "auto",
        capturable: bool = False,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if step_scaling not in STEP_SCALINGS:
            raise ValueError(f"step_scaling must be one of {STEP_SCALINGS}, got {step_scaling!r}")
        tau = check_tau(tau)
        self.layers: list[tuple[str, LowRankLayer]] = list(low_rank_layers(model))
        self.step_scaling = step_scaling
        self.reference_compat = reference_compat
        self.store_scaled_direction = store_scaled_direction
        if retraction not in RETRACTIONS + ("auto",):
            raise ValueError(f"retraction must be one of {RETRACTIONS} or 'auto', got {retraction!r}")
        if core_projection not in CORE_PROJECTIONS + ("auto",):
            raise ValueError(f"core_projection must be one of {CORE_PROJECTIONS} or 'auto', got {core_projection!r}")
        # "auto" is decided per device at each step (manifold.runs_on_host): Householder QR and
        # LAPACK's SVD on the CPU — the fastest there, and Householder the more accurate in float32
        # (data-parallel runs match one-process runs to 1e-4 only with it) — CholeskyQR2 and Newton
        # iterations elsewhere, where QR and SVD synchronise with the host. The paper's code uses
        # Householder QR, so reference_compat keeps it everywhere.
        self.retraction = "householder" if reference_compat and retraction == "auto" else retraction
        self.core_projection = core_projection
        if capturable and (reference_compat or retraction == "householder" or core_projection == "svd"):
            raise ValueError(
                "capturable needs a step that never waits for the host: retraction 'cholesky-qr2' or 'auto', "
                "core_projection 'newton' or 'auto', and no reference_compat"
            )
        self.capturable = capturable
        self._device_hyperparameters: DeviceHyperparameters | None = None  # capturable only, made at the first step
        self._padded: PaddedFactors | None = None  # the device path's batch, kept while shapes hold
        self._padded_cores: PaddedCores | None = None  # likewise for the cores, while ranks hold
        factor_ids = set()
        stiefel, core = [], []
        for _, layer in self.layers:
            stiefel += [layer.U, layer.V]
            core.append(layer.S)
            factor_ids |= {id(layer.U), id(layer.V), id(layer.S)}
        other = [p for p in model.parameters() if id(p) not in factor_ids and p.requires_grad]
        groups = [
            {"params": ps, "name": name} for name, ps in (("stiefel", stiefel), ("core", core), ("other", other)) if ps
        ]
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "tau": tau}
        super().__init__(groups, defaults)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch.optim's, and the device path's padded batches made afresh: only their blocks
        are loaded from the parameters each step, so whatever a step left in the padding (a
        non-finite step: NaN there for good) would otherwise outlive the state loaded over it."""
        super().load_state_dict(state_dict)
        self._padded = self._padded_cores = None

    # -- hyperparameters -------------------------------------------------------------------
    def _group(self, name: str) -> dict | None:
        return next((g for g in self.param_groups if g.get("name") == name), None)

    @property
    def tau(self) -> float:
        return (self._group("core") or self.param_groups[0])["tau"]

    def set_tau(self, tau: float) -> None:
        """Change τ. Raises ValueError unless τ ∈ [0, ∞] (and changes nothing then).

        A tighter τ projects the cores at once, so a model measured, attacked or saved before
        the next step already has κ(S) ≤ 1 + τ; a looser one leaves them (the bound still holds)."""
        tau = check_tau(tau)
        tighter = tau < self.tau
        for group in self.param_groups:
            group["tau"] = tau
        if tighter:
            with torch.no_grad():
                self._project_cores([layer.S for _, layer in self.layers], tau)

    def refresh_hyperparameters(self) -> DeviceHyperparameters:
        """Copy the groups' η, μ, weight decay and τ into the device tensors a ``capturable``
        step reads, filling only what changed (device_hyperparameters). ``step`` does it itself;
        before a captured step's replay, which runs no Python, the caller must."""
        first = self.param_groups[0]["params"][0]
        hyper = self._device_hyperparameters
        if (
            hyper is None
            or hyper.device != first.device
            or hyper.values.dtype != first.dtype
            or len(hyper.values) != len(self.param_groups)
        ):
            hyper = DeviceHyperparameters(len(self.param_groups), first.dtype, newton_dtype(first.device), first.device)
            self._device_hyperparameters = hyper
        hyper.refresh(self.param_groups, self.tau)
        return hyper

    def capture_structure(self) -> tuple:
        """What the step decides from Python numbers, so what a captured step must be captured
        again for when it changes: with ``capturable``, τ's regime and which hyperparameters are
        zero or shared (DeviceHyperparameters.structure); otherwise every value, and τ's regime."""
        if self.capturable:
            return DeviceHyperparameters.structure(self.param_groups, self.tau)
        values = tuple((g["lr"], g["momentum"], g["weight_decay"], g["tau"]) for g in self.param_groups)
        return values, tau_regime(self.tau)

    def workspaces(self) -> list[Tensor]:
        """The tensors the step reads or writes that belong to this optimizer rather than to its
        state: the padded batches and the device hyperparameters. A captured step holds their
        memory (a new optimizer, or new batches after a change of shapes, need a new capture)."""
        tensors = []
        if self._padded is not None:
            tensors += [self._padded.buffer, self._padded.blocks.index]
        if self._padded_cores is not None:
            tensors += [self._padded_cores.buffer, self._padded_cores.blocks.index]
        if self._device_hyperparameters is not None:
            tensors += [self._device_hyperparameters.values, self._device_hyperparameters.bounds]
        return tensors

    def _row(self, group: dict) -> int:
        """The index of ``group`` in param_groups (its row of the device hyperparameters)."""
        return next(i for i, g in enumerate(self.param_groups) if g is group)

    # -- the step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hyper = self.refresh_hyperparameters() if self.capturable else None
        stiefel, core, other = self._group("stiefel"), self._group("core"), self._group("other")
        active = [layer for _, layer in self.layers if layer.S.grad is not None]
        # Scales are taken before S moves: they belong to the point the gradient was taken at.
        scales = self._scales(active, self.tau) if active else 1.0
        factors = [p for layer in active for p in (layer.U, layer.V)]
        cores = [layer.S for layer in active]
        others = [] if other is None else [p for p in other["params"] if p.grad is not None]
        parts = [(group, params) for group, params in ((stiefel, factors), (core, cores), (other, others)) if params]
        moved = self._momenta(cast(list[tuple[dict, list[Tensor]]], parts), hyper)
        directions = moved[0] if factors else []
        # S and the other parameters take a plain SGD step: one foreach call per learning rate
        self._sgd_update(
            [(group, params, bufs) for (group, params), bufs in zip(parts, moved) if group is not stiefel], hyper
        )
        if active:
            assert stiefel is not None and core is not None, "a CondLR with low-rank layers has both groups"
            retraction = self._resolved(self.retraction, RETRACTIONS, factors[0].device)
            # −η of U and V: a Python number, or a tensor the step reads (capturable)
            step_size = -stiefel["lr"] if hyper is None else hyper.negative_lr(self._row(stiefel))
            if retraction == "cholesky-qr2":
                self._stiefel_step_padded(stiefel, factors, directions, scales, step_size)
            else:
                # U and V of a layer share its scale: c per factor, in the order of factors
                per_factor = scales if isinstance(scales, float) else scales.repeat_interleave(2)
                self._stiefel_step_by_shape(stiefel, factors, directions, per_factor, step_size)
            self._project_cores(cores, core["tau"])
        return loss

    def _momenta(
        self, parts: list[tuple[dict, list[Tensor]]], hyper: DeviceHyperparameters | None
    ) -> list[list[Tensor]]:
        """m ← μ m + (g + wd·p) for the parameters of every (group, params) part; returns each
        part's buffers (or its raw gradients where μ = 0). Parts of equal μ share one foreach
        call each for the multiply and the add, so a step pays two kernels for every momentum,
        not per group. ``hyper``: μ and wd read from there (``capturable``), not from the groups."""
        result: list[list[Tensor]] = []
        old_by_momentum: dict[float, tuple[list[Tensor], list[Tensor]]] = defaultdict(lambda: ([], []))
        momentum_of: dict[float, float | Tensor] = {}  # each μ's value as the kernels take it
        for group, params in parts:
            grads = cast(list[Tensor], [p.grad for p in params])  # only parameters with one are stepped
            if group["weight_decay"] != 0:
                if hyper is None:
                    grads = list(torch._foreach_add(grads, list(params), alpha=group["weight_decay"]))
                else:
                    decay = torch._foreach_mul(list(params), hyper.weight_decay(self._row(group)))
                    grads = list(torch._foreach_add(grads, decay))
            if group["momentum"] == 0:
                result.append(grads)
                continue
            bufs = []
            for p, g in zip(params, grads):
                buf = self.state[p].get("momentum_buffer")
                if buf is None:  # the first step: m = g
                    buf = self.state[p]["momentum_buffer"] = g.clone()
                else:
                    old, new = old_by_momentum[group["momentum"]]
                    old.append(buf)
                    new.append(g)
                    if hyper is not None:
                        momentum_of.setdefault(group["momentum"], hyper.momentum(self._row(group)))
                bufs.append(buf)
            result.append(bufs)
        for momentum, (old, new) in old_by_momentum.items():
            torch._foreach_mul_(old, momentum_of.get(momentum, momentum))
            torch._foreach_add_(old, new)
        return result

    def _sgd_update(
        self, parts: list[tuple[dict, list[Tensor], list[Tensor]]], hyper: DeviceHyperparameters | None
    ) -> None:
        """p ← p − η·m for every (group, params, buffers) part, one foreach call per η (two
        when η is read from ``hyper``: a foreach add takes no tensor as its multiplier)."""
        by_lr: dict[float, tuple[list[Tensor], list[Tensor], list[dict]]] = defaultdict(lambda: ([], [], []))
        for group, params, bufs in parts:
            by_lr[group["lr"]][0].extend(params)
            by_lr[group["lr"]][1].extend(bufs)
            by_lr[group["lr"]][2].append(group)
        for lr, (params, bufs, groups) in by_lr.items():
            if hyper is None:
                torch._foreach_add_(params, bufs, alpha=-lr)
            else:
                torch._foreach_add_(params, torch._foreach_mul(bufs, hyper.negative_lr(self._row(groups[0]))))

    @staticmethod
    def _resolved(choice: str, options: tuple[str, str], device: torch.device) -> str:
        """``choice``, or for "auto" the host's option (the first) or the device's (the second)."""
        if choice != "auto":
            return choice
        return options[0] if runs_on_host(device) else options[1]

    def _scales(self, layers: Sequence[LowRankLayer], tau: float) -> Tensor | float:
        """The step scale c of every layer (module docstring): one float for all, or a vector."""
        if self.step_scaling == "none" or math.isinf(tau):
            return 1.0
        if self.step_scaling == "alpha":
            energies = torch.stack(torch._foreach_norm([layer.S for layer in layers])).square()
            ranks = torch.stack([layer.live_rank for layer in layers]).to(energies.dtype)
            return torch.where(energies > 0, ranks / energies, 1.0)
        if tau == 0.0:
            # a = 0 (a layer made from an all-zero weight) has no scale to undo
            a = torch.stack([layer.init_sigma_mean for layer in layers])
            return torch.where(a > 0, a.reciprocal(), 1.0)
        ratios = [self.state[layer.S].get("inv_kappa_sq") for layer in layers]
        if any(ratio is None for ratio in ratios):  # the first step: c = 1 until one is recorded
            return (
                1.0
                if all(r is None for r in ratios)
                else torch.stack([layer.S.new_ones(()) if r is None else r for layer, r in zip(layers, ratios)])
            )
        return torch.stack(ratios)

    def _stiefel_step_padded(
        self,
        group: dict,
        params: list[Tensor],
        directions: list[Tensor],
        scales: Tensor | float,
        step_size: Tensor | float,
    ) -> None:
        """Steps 2–3 for every U and V at once, as one padded batch (manifold.PaddedFactors) and
        CholeskyQR: one chain of kernels whatever the number of layers and shapes. ``scales``:
        c per layer (U and V of a layer adjacent in ``params``) or one for all; ``step_size``: −η."""
        shapes = [(p.shape[0], p.shape[1]) for p in params]
        if (
            self._padded is None
            or self._padded.shapes != tuple(shapes)
            or self._padded.buffer.dtype != params[0].dtype
            or self._padded.buffer.device != params[0].device
        ):
            self._padded = PaddedFactors(shapes, params[0].dtype, params[0].device)
        batch = self._padded
        count = len(params)
        batch.blocks.load(batch.buffer, [*params, *directions])
        P, M = batch.factors, batch.moments
        M.sub_(P @ (P.mT @ M))  # (I − P Pᵀ) M, in place: M is not needed after
        store = group["momentum"] != 0
        if store and not self.store_scaled_direction:
            batch.blocks.unload(batch.buffer, directions, first=count)
            store = False
        if not isinstance(scales, float):  # entries (U₁, V₁, U₂, V₂, …): one scale per pair
            M.view(count // 2, 2, *M.shape[1:]).mul_(scales.view(-1, 1, 1, 1))
        elif scales != 1.0:
            M.mul_(scales)
        # the result overwrites the factors: P is not read again
        moved = torch.add(P, M, alpha=step_size) if isinstance(step_size, float) else torch.addcmul(P, M, step_size)
        retract_cholesky_qr(moved, out=P)
        batch.blocks.unload(batch.buffer, [*params, *directions] if store else params)

    def _stiefel_step_by_shape(
        self,
        group: dict,
        params: list[Tensor],
        directions: list[Tensor],
        scales: Tensor | float,
        step_size: Tensor | float,
    ) -> None:
        """Steps 2–3 with one batch per distinct shape (Householder QR does not batch padding);
        ``step_size``: −η."""
        per_factor = scales if isinstance(scales, float) else scales.unbind(0)  # views, no index tensor
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[tuple(p.shape)].append(i)
        for idx in by_shape.values():
            group_params = [params[i] for i in idx]
            moments = [directions[i] for i in idx]
            # A lone matrix of its shape is used in place (a view), not copied into a stack.
            P = group_params[0].unsqueeze(0) if len(idx) == 1 else torch.stack(group_params)
            M = moments[0].unsqueeze(0) if len(idx) == 1 else torch.stack(moments)
            projected = project_orthogonal_complement(P, M)
            if isinstance(per_factor, float):
                D = per_factor * projected
            else:
                D = torch.stack([per_factor[i] for i in idx]).to(P.dtype).view(-1, 1, 1) * projected
            Q = retract_qr(P + step_size * D)  # P − η D: the same rounding either way
            torch._foreach_copy_(group_params, list(Q.unbind(0)))
            if group["momentum"] != 0:
                stored = D if self.store_scaled_direction else projected
                torch._foreach_copy_(moments, list(stored.unbind(0)))

    def _project_cores(self, cores: Sequence[Tensor], tau: float) -> None:
        """Apply project_condition to every core (batched, see manifold.project_cores) and record
        (σ_min/σ_max)² for the reference step scaling — in place, so the next step reads the
        same memory (a captured step depends on it)."""
        if math.isinf(tau) or not cores:
            return
        method = self._resolved(self.core_projection, CORE_PROJECTIONS, cores[0].device)
        if method == "newton":
            batch = self._padded_cores_for(cores)
            # (1 − δ, 1 + δ) from τ, or from the tensor a capturable step reads
            bounds = self.refresh_hyperparameters().bounds if self.capturable and tau != 0.0 else None
            projected, ratio = batch.project(cores, tau, self.reference_compat, bounds)
            batch.blocks.unload(projected, cores)
            ratios = list(ratio.to(cores[0].dtype).unbind(0))
        else:
            results = project_cores(cores, tau, self.reference_compat, method)
            torch._foreach_copy_(list(cores), [projected for projected, _ in results])
            ratios = [ratio for _, ratio in results if ratio is not None]
        recorded = [r for S in cores if isinstance(r := self.state[S].get("inv_kappa_sq"), Tensor)]
        if len(recorded) == len(cores) and all(r.dtype == S.dtype for r, S in zip(recorded, cores)):
            torch._foreach_copy_(recorded, ratios)
        else:
            for S, ratio in zip(cores, ratios):
                self.state[S]["inv_kappa_sq"] = ratio.clone()

    def _padded_cores_for(self, cores: Sequence[Tensor]) -> PaddedCores:
        """The kept PaddedCores batch for these cores, made again when their ranks, dtype or
        device differ from the last call's."""
        ranks = tuple(S.shape[-1] for S in cores)
        batch = self._padded_cores
        dtype, device = cores[0].dtype, cores[0].device
        if batch is None or batch.ranks != ranks or batch.dtype != dtype or batch.buffer.device != device:
            batch = self._padded_cores = PaddedCores(ranks, cores[0].dtype, cores[0].device)
        return batch

    # -- rank truncation ---------------------------------------------------------------------
    @torch.no_grad()
    def truncate(
        self,
        theta: float | None = None,
        rank: int | None = None,
        layers: Iterable[str] | None = None,
        min_rank: int = 1,
    ) -> list[RankChange]:
        """Truncate the cores of the named layers (all when None) with relative tolerance θ
        (smallest r' ≥ min_rank with sqrt(Σ_{i>r'} σ_i²) ≤ θ‖σ‖₂) or to an explicit rank.

        S = P Σ Qᵀ; U ← U P[:, :r'], V ← V Q[:, :r'], S ← Σ[:r', :r']; momentum rotated the
        same way (m_U P, m_V Q, Pᵀ m_S Q); then the τ projection. Ranks never grow.
        """
        if (theta is None) == (rank is None):
            raise ValueError("truncate needs exactly one of theta (relative tolerance) or rank")
        if theta is not None:
            theta = check_theta(theta)
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank!r}")
        if min_rank < 1:
            raise ValueError(f"min_rank must be >= 1, got {min_rank!r}")
        names = dict(self.layers)
        chosen = list(names) if layers is None else list(layers)
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; low-rank layers are {list(names)}")
        changes = []
        tau = self.tau
        for name in chosen:
            layer = names[name]
            P, sigma, Qh = torch.linalg.svd(layer.S)
            old = layer.rank
            if rank is not None:
                new = max(min(rank, old), min(min_rank, old))
            else:
                assert theta is not None  # exactly one of theta and rank, checked above
                new = min(truncation_rank(sigma, theta, min_rank), old)
            discarded = float(sigma[new:].square().sum().sqrt())
            Q = Qh.mT
            self._rotate(layer, P[:, :new], Q[:, :new], sigma[:new])
            if new != old or not math.isinf(tau):
                self._project_cores([layer.S], tau)
            changes.append(RankChange(name, old, new, discarded))
        return changes

    def _rotate(self, layer: LowRankLayer, P: Tensor, Q: Tensor, sigma: Tensor) -> None:
        """Rewrite the layer in the rotated bases U P, V Q with core diag(σ), moving the
        momentum buffers along; parameters keep their identity so param groups stay valid."""
        new_values = {"U": layer.U @ P, "V": layer.V @ Q, "S": torch.diag(sigma)}
        new_bufs = {}
        for name, rotate in (
            ("U", lambda m: m @ P),
            ("V", lambda m: m @ Q),
            ("S", lambda m: transport_core_state("momentum_buffer", m, P.mT, Q)),
        ):
            buf = self.state[getattr(layer, name)].get("momentum_buffer")
            if buf is not None:
                new_bufs[name] = rotate(buf)
        old_params = layer.resize_rank(P.shape[1])
        for name, value in new_values.items():
            p = getattr(layer, name)
            p.copy_(value)
            self._replace_param(old_params[name], p)
            if name in new_bufs:
                self.state[p]["momentum_buffer"] = new_bufs[name]

    def _replace_param(self, old: Tensor, new: Tensor) -> None:
        """Put ``new`` where ``old`` was in its param group; move its state over."""
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p is old:
                    group["params"][i] = new
                    state = self.state.pop(old, None)
                    if state is not None:
                        self.state[new] = state
                    return
        raise KeyError("parameter not managed by this optimizer")

    def ranks(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers}
