"""Rank-adaptive low-rank training in windows of k batches: ``robust-dlrt`` and ``condlr-adaptive``.

Every low-rank layer stores U (m×R), S (R×R), V (n×R) at its maximum rank R and trains the
live block of rank r (see ``lowrank``). Batches are grouped into windows of k ≥ 2:

* **augment** (first batch; no optimizer step). With g_U, g_V the gradients of the live
  factors, Û = qf([U | −g_U])[:, :r̂], V̂ = qf([V | −g_V])[:, :r̂], r̂ = min(2r, R), and
  Ŝ = (ÛᵀU) S (VᵀV̂). qf fixes signs so diag(R) > 0, hence Û[:, :r] = U and U ∈ span(Û):
  ÛŜV̂ᵀ = ÛÛᵀ U S Vᵀ V̂V̂ᵀ = U S Vᵀ — W does not move. The core optimizer's state maps
  the same way: linear moments (momentum buffer, Adam's exp_avg) as A X B with A = ÛᵀU,
  B = VᵀV̂; second moments (exp_avg_sq) as (A √X B)², the public reference code's rule, which
  keeps them non-negative.
* **core steps** (middle batches): the core optimizer (SGD with momentum or AdamW, see
  ``core_optimizer``) steps every S and every other parameter; U and V are frozen (their
  gradients are dropped).
* **truncate** (last batch, after its core step): S = P diag(σ) Qᵀ, r' from the criterion,
  clamped to [r_min, r]; U ← U P[:, :r'], V ← V Q[:, :r'], S ← diag(σ_1..σ_r'); the state
  maps with A = P[:, :r']ᵀ, B = Q[:, :r']. ‖W_before − W_after‖_F = ‖σ_{r'+1..r}‖ exactly.

The loss gets β·Σ_layers ‖S Sᵀ − (‖S‖²_F / r) I_r‖_F (``regularizer``), which is zero exactly
when S is a scaled orthogonal matrix (κ(S) = 1).

``robust-dlrt`` (Schotthöfer et al. 2025) is the above with the Frobenius criterion: the
smallest r' with ‖σ_{r'+1..r}‖ ≤ θ‖σ‖ (``manifold.truncation_rank``).

``condlr-adaptive`` adds CondLR's hard guarantee κ(S) ≤ 1 + τ at every window boundary
(after each truncation, before the first window, and whenever ``before_evaluation`` is called,
which ends a window early). Inside a window S is free (only the soft β acts): new directions
enter at σ = 0 and can grow on the loss's merit, where a per-step τ projection would lift them
at once to the floor m(1−δ) along arbitrary pairings. At the boundary the rank is chosen on the
*pre-projection* spectrum, then ``project_condition(S, τ)`` clamps σ into [m(1−δ), m(1+δ)].

The tension: the conditioned part of the spectrum is flat, and a flat spectrum always has about
θ²r directions whose removal passes ‖σ_tail‖ ≤ θ‖σ‖. Three criteria were measured
(benchmarks/adaptive_train.py, Fashion-MNIST LeNet5, one epoch, one seed, τ = 0.1, θ = 0.1,
k = 10, β = 0, ranks (conv1, conv2, fc1) starting at (4, 10, 100) with storage (10, 25, 250)):

    criterion   final ranks     compression  test acc  FGSM ε=.02 / .05  mean jump ‖ΔW‖/‖W‖
    frobenius   (4, 11, 90)     68.2 %       68.1 %    63.4 / 54.8 %     0.042
    relative    (4, 13, 107)    62.0 %       66.1 %    61.8 / 54.5 %     0.040
    nearest     (4, 10, 100)    64.9 %       67.8 %    63.7 / 54.6 %     0.033

* ``frobenius`` (the default, and robust-dlrt's rule): the θ rule on the pre-projection
  spectrum. It does cut flat directions, but that is the only compression pressure there is;
  augmented directions that grew take their place, so ranks move both ways. Most compression at
  the same accuracy (the accuracy spread, ~2 points, is one seed's noise).
* ``relative``: keep σ_i ≥ θσ_1 (scale-aware: conditioned directions, σ_i ≥ σ_1/(1+τ), always
  survive). Nothing is ever cut and augmented directions pass 0.1σ_1 within one window, so
  ranks only grow, for nothing.
* ``nearest``: the r' whose truncation followed by the τ projection moves W least
  (``conditioned_distances``; θ unused). Smallest jumps, but a new direction must reach about
  half the floor within one window to be kept and none did: ranks never moved — fixed-rank
  CondLR with an augment batch wasted per window.

Adding β = 0.05 inside the window (relative criterion) changed nothing useful (67.0 %, FGSM
60.9 / 50.5 %, jump 0.063); the presets leave β = 0 for condlr-adaptive.

Integration: one ``RankAdaptation`` per run, called once per batch in place of
``optimizer.step()``; ``regularizer()`` is added to the loss; ``state_dict`` /
``load_state_dict`` beside the optimizer's; θ, β, k and τ are read/write properties, validated,
taking effect at the next truncation / step / window boundary.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rlr_engine.core.catalog import ADAPTIVE_METHODS, CORE_OPTIMIZERS
from rlr_engine.core.validation import check_adapt_every, check_beta, check_tau, check_theta
from rlr_engine.method.condlr import RankChange
from rlr_engine.method.lowrank import LowRankLayer, low_rank_layers
from rlr_engine.method.manifold import project_condition, retract_qr, transport_core_state, truncation_rank

METHODS = ADAPTIVE_METHODS
CRITERIA = ("frobenius", "relative", "nearest")
DEFAULT_CRITERION = {"robust-dlrt": "frobenius", "condlr-adaptive": "frobenius"}
KAPPA_SLACK = 1e-5  # relative float slack before a core counts as violating κ ≤ 1 + τ


def core_optimizer(
    model: nn.Module, kind: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """torch.optim.SGD (with momentum) or AdamW over every trainable parameter except the bases
    U, V of low-rank layers, which move only by augmentation and truncation."""
    if kind not in CORE_OPTIMIZERS:
        raise ValueError(f"core optimizer must be one of {CORE_OPTIMIZERS}, got {kind!r}")
    bases = {id(p) for _, layer in low_rank_layers(model) for p in (layer.U, layer.V)}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in bases]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def soft_conditioning_penalty(S: Tensor) -> Tensor:
    """‖S Sᵀ − (‖S‖²_F / r) I_r‖_F for an r×r core (zero iff S is a scaled orthogonal matrix)."""
    r = S.shape[0]
    gram = S @ S.mT
    return torch.linalg.matrix_norm(gram - (gram.diagonal().sum() / r) * torch.eye(r, dtype=S.dtype, device=S.device))


def conditioned_distances(sigma: Tensor, tau: float) -> Tensor:
    """d[j] = ‖σ − c_j‖ for j = 1..r, where c_j keeps σ_1..σ_j clamped into [m_j(1−δ), m_j(1+δ)]
    (m_j their mean, δ = τ/(2+τ)) and drops the rest: how far truncating to rank j and then
    projecting with ``project_condition`` moves W."""
    sigma = sigma.double()
    r = sigma.numel()
    j = torch.arange(1, r + 1, dtype=sigma.dtype)
    means = sigma.cumsum(0) / j
    tail = sigma.square().flip(0).cumsum(0).flip(0)
    tail = torch.cat([tail[1:], tail.new_zeros(1)])  # Σ_{i>j} σ_i²
    if math.isinf(tau):
        return tail.sqrt()
    delta = tau / (2.0 + tau)
    low, high = (means * (1 - delta)).unsqueeze(1), (means * (1 + delta)).unsqueeze(1)
    kept = torch.arange(r).unsqueeze(0) < j.unsqueeze(1)  # row j−1 keeps the first j
    clamp = (sigma - torch.minimum(torch.maximum(sigma, low), high)).square() * kept
    return (clamp.sum(1) + tail).sqrt()


def criterion_rank(sigma: Tensor, criterion: str, theta: float, min_rank: int, tau: float = math.inf) -> int:
    """New rank r' from σ (descending, on the host), at least min(min_rank, len σ).

    frobenius: smallest r' with ‖σ_{r'+1..}‖ ≤ θ‖σ‖; relative: #{i : σ_i ≥ θ σ_1};
    nearest: the r' whose truncation followed by the τ projection moves W least
    (``conditioned_distances``; θ is not used)."""
    r = sigma.numel()
    if criterion == "frobenius":
        new = truncation_rank(sigma, theta, min_rank)
    elif criterion == "relative":
        new = int((sigma >= theta * sigma[0]).sum()) if r else 0
    else:
        lower = min(min_rank, r)
        new = lower + int(torch.argmin(conditioned_distances(sigma, tau)[lower - 1 :]))
    return max(min(new, r), min(min_rank, r))


class RankAdaptation:
    """The window schedule, augmentation, truncation and regularizer of one run.

    ``optimizer`` must hold every core S and no basis U, V (build it with ``core_optimizer``).
    Per batch: ``loss = task_loss + adaptation.regularizer()``, backward, then
    ``adaptation.step()`` instead of ``optimizer.step()``; it returns the window's RankChanges
    on truncation batches and [] otherwise.

    Args:
        model: the network, converted with ``to_low_rank(..., max_rank_fraction=...)`` so each
            layer has storage for rank growth.
        optimizer: the core optimizer (``core_optimizer``): every S and the other parameters,
            no basis.
        method: "robust-dlrt" (soft conditioning by β only) or "condlr-adaptive" (also
            κ(S) ≤ 1 + τ at every window boundary and before anything is measured).
        adapt_every: k, batches per window (augment on the first, truncate on the last), ≥ 2.
        theta: relative truncation tolerance θ ∈ [0, 1).
        beta: weight β ≥ 0 of the soft regularizer Σ ‖S Sᵀ − (‖S‖²_F / r) I‖_F (0: off).
        tau: condlr-adaptive's tolerance τ ∈ [0, ∞]; robust-dlrt ignores it.
        min_rank: no truncation goes below this rank.
        criterion: the truncation rule (see ``criterion_rank``); None: the method's default.
        project_initial: condition the cores at once (condlr-adaptive); False when they come
            from a checkpoint, saved conditioned with the τ live then.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        method: str,
        adapt_every: int = 10,
        theta: float = 0.1,
        beta: float = 0.0,
        tau: float = 0.1,
        min_rank: int = 1,
        criterion: str | None = None,
        project_initial: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        criterion = DEFAULT_CRITERION[method] if criterion is None else criterion
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        self.model = model
        self.optimizer = optimizer
        self.method = method
        self.criterion = criterion
        self.min_rank = min_rank
        self.layers: list[tuple[str, LowRankLayer]] = list(low_rank_layers(model))
        self._adapt_every = check_adapt_every(adapt_every)
        self._theta = check_theta(theta)
        self._beta = check_beta(beta)
        self._tau = check_tau(tau) if method == "condlr-adaptive" else math.inf
        self.position = 0  # index of the next batch in the current window
        self.windows = 0  # completed windows
        self._check_ownership()
        self.check_min_rank(min_rank)
        # condlr-adaptive starts from conditioned cores; cores restored from a checkpoint were
        # saved conditioned with the τ live then, which load_state_dict brings back
        if self.hard_conditioning and project_initial:
            self._project_violating()

    def _check_ownership(self) -> None:
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        for name, layer in self.layers:
            if id(layer.U) in held or id(layer.V) in held:
                raise ValueError(
                    f"the optimizer holds the bases of layer {name!r}; they move only by "
                    f"augmentation and truncation (build it with core_optimizer)"
                )
            if id(layer.S) not in held:
                raise ValueError(f"the optimizer does not hold the core S of layer {name!r}")

    # -- hyperparameters (read/write; validated) ------------------------------------------------
    @property
    def uses_tau(self) -> bool:
        """condlr-adaptive bounds κ(S) by 1 + τ; robust-dlrt conditions softly (β) instead."""
        return self.method == "condlr-adaptive"

    @property
    def hard_conditioning(self) -> bool:
        return self.uses_tau and not math.isinf(self._tau)

    @property
    def adapt_every(self) -> int:
        return self._adapt_every

    @adapt_every.setter
    def adapt_every(self, value: int) -> None:
        """A shorter window that has already run past its new end truncates at the next batch."""
        self._adapt_every = check_adapt_every(value)

    @property
    def theta(self) -> float:
        return self._theta

    @theta.setter
    def theta(self, value: float) -> None:
        self._theta = check_theta(value)

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = check_beta(value)

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        """Takes effect at the next window boundary (or ``before_evaluation``)."""
        if not self.uses_tau:
            raise ValueError(f"tau applies to condlr-adaptive only; {self.method} conditions softly (beta)")
        self._tau = check_tau(value)

    def check_min_rank(self, min_rank: Any) -> None:
        """ValueError unless ``min_rank`` is an integer ≥ 1 that no layer's live rank is below
        (where the layer's storage allows it)."""
        if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
            raise ValueError(f"min_rank must be an integer >= 1, got {min_rank!r}")
        below = [(name, layer.rank) for name, layer in self.layers if layer.rank < min(min_rank, layer.max_rank)]
        if below:
            allowed = min(rank for _, rank in below)
            raise ValueError(
                f"min_rank = {min_rank} is not allowed: layer {below[0][0]!r} holds rank {below[0][1]}; "
                f"must be <= {allowed} (or raise rank_fraction)"
            )

    def lower_rank(self, layer: LowRankLayer) -> int:
        """r_min for this layer (never above its allocated rank)."""
        return min(self.min_rank, layer.max_rank)

    def ranks(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers}

    # -- per batch ------------------------------------------------------------------------------
    def regularizer(self) -> Tensor | float:
        """β·Σ ‖S Sᵀ − (‖S‖²_F/r) I‖_F over the live cores; 0.0 when β = 0 or on an augment batch
        (no step follows it)."""
        if self._beta == 0 or self.position == 0 or not self.layers:
            return 0.0
        return self._beta * sum(soft_conditioning_penalty(layer.live_factors()[1]) for _, layer in self.layers)

    @torch.no_grad()
    def step(self) -> list[RankChange]:
        """Augment, core step, or core step then truncate, depending on the window position."""
        changes: list[RankChange] = []
        if self.position == 0:
            self._augment()
            self.position = 1
        else:
            self.optimizer.step()
            if self.position >= self._adapt_every - 1:
                changes = self.end_window()
            else:
                self.position += 1
        for _, layer in self.layers:
            layer.U.grad = None
            layer.V.grad = None
        return changes

    @torch.no_grad()
    def before_evaluation(self) -> list[RankChange]:
        """Call before an evaluation, attack or checkpoint. condlr-adaptive: ends the current
        window early (truncate + τ projection) so what is measured or saved has κ(S) ≤ 1 + τ,
        and re-projects cores a live τ change left outside the bound. robust-dlrt has no hard
        guarantee: nothing changes, so measuring does not alter its trajectory."""
        if self.method != "condlr-adaptive":
            return []
        if self.position != 0:
            return self.end_window()
        if self.hard_conditioning:
            self._project_violating()
        return []

    @torch.no_grad()
    def end_window(self) -> list[RankChange]:
        """End the current window now: truncate with θ (then the τ projection for
        condlr-adaptive); the next batch augments. The user's "truncate" command."""
        changes = self._truncate()
        self.position = 0
        self.windows += 1
        return changes

    # -- augmentation ---------------------------------------------------------------------------
    def _augment(self) -> None:
        for _, layer in self.layers:
            r = layer.rank
            grown = min(2 * r, layer.max_rank)
            if grown == r or layer.U.grad is None or layer.V.grad is None:
                continue
            U, S, V = (t.detach() for t in layer.live_factors())
            new_U = retract_qr(torch.cat([U, -layer.U.grad[:, :r]], dim=1))[:, :grown]
            new_V = retract_qr(torch.cat([V, -layer.V.grad[:, :r]], dim=1))[:, :grown]
            left, right = new_U.mT @ U, V.mT @ new_V  # r̂×r, r×r̂
            core = left @ S @ right
            layer.U[:, :grown] = new_U
            layer.V[:, :grown] = new_V
            self._write_core(layer, core, left, right)

    # -- truncation -----------------------------------------------------------------------------
    def _truncate(self) -> list[RankChange]:
        svds = [torch.linalg.svd(layer.live_factors()[1].detach()) for _, layer in self.layers]
        if not svds:
            return []
        host = torch.cat([sigma for _, sigma, _ in svds]).cpu()  # one transfer for every layer
        sigmas = host.split([layer.rank for _, layer in self.layers])
        changes = []
        for (name, layer), (P, sigma, Qh), host_sigma in zip(self.layers, svds, sigmas):
            old = layer.rank
            new = criterion_rank(host_sigma, self.criterion, self._theta, self.lower_rank(layer), self._tau)
            discarded = float(host_sigma[new:].double().square().sum().sqrt())
            U, _, V = (t.detach() for t in layer.live_factors())
            left, right = P[:, :new].mT, Qh[:new].mT
            layer.U[:, :new] = U @ P[:, :new]
            layer.V[:, :new] = V @ right
            self._write_core(layer, torch.diag(sigma[:new]), left, right)
            changes.append(RankChange(name, old, new, discarded))
        if self.hard_conditioning:
            self._project(layer for _, layer in self.layers)
        return changes

    # -- shared pieces --------------------------------------------------------------------------
    def _write_core(self, layer: LowRankLayer, core: Tensor, left: Tensor, right: Tensor) -> None:
        """Set the live core to ``core`` (r'×r'), zero the dead part, map the optimizer state of
        S by X ↦ left·X·right (second moments through their square roots), set r'."""
        old, new = layer.rank, core.shape[0]
        layer.S.zero_()
        layer.S[:new, :new] = core
        for key, value in self.optimizer.state[layer.S].items():
            if not (isinstance(value, Tensor) and value.shape == layer.S.shape):
                continue
            mapped = transport_core_state(key, value[:old, :old], left, right)
            value.zero_()
            value[:new, :new] = mapped
        layer.set_live_rank(new)

    @torch.no_grad()
    def _project(self, layers) -> None:
        for layer in layers:
            S = layer.live_factors()[1]
            S.copy_(project_condition(S.detach(), self._tau)[0])

    @torch.no_grad()
    def _project_violating(self) -> None:
        """Project only cores with κ > (1 + τ)(1 + slack): re-projecting a conditioned core
        would change its last bits for nothing."""
        bound = (1 + self._tau) * (1 + KAPPA_SLACK)
        violating = []
        for _, layer in self.layers:
            sigma = torch.linalg.svdvals(layer.live_factors()[1].detach())
            if not bool(sigma[0] <= bound * sigma[-1]):
                violating.append(layer)
        self._project(violating)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "criterion": self.criterion,
            "position": self.position,
            "windows": self.windows,
            "adapt_every": self._adapt_every,
            "theta": self._theta,
            "beta": self._beta,
            "tau": self._tau,
            "min_rank": self.min_rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the window position and hyperparameters (the live ranks come with the model)."""
        if state["method"] != self.method:
            raise ValueError(f"state is for method {state['method']!r}, this run is {self.method!r}")
        if state["criterion"] not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {state['criterion']!r}")
        self.criterion = state["criterion"]
        self._adapt_every = check_adapt_every(state["adapt_every"])
        self._theta = check_theta(state["theta"])
        self._beta = check_beta(state["beta"])
        self._tau = check_tau(state["tau"])
        self.min_rank = int(state["min_rank"])
        self.position = int(state["position"])
        self.windows = int(state["windows"])
