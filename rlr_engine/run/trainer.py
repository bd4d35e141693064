"""The Trainer: model, optimizer, scheduler and data of one run, and the steps that change them.

No threads and no files: it is what every process runs (the engine thread today, every rank
under torch.distributed next). The engine decides when to step, evaluate, attack or truncate;
the recorder writes down what happened.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlr_engine.control.records import LayerStats
from rlr_engine.core.config import AttackSpec, RunConfig
from rlr_engine.core.errors import DeviceUnavailable
from rlr_engine.core.validation import check_adapt_every, check_beta, check_lr, check_theta
from rlr_engine.method.adaptive import RankAdaptation, core_optimizer
from rlr_engine.method.condlr import CondLR, RankChange
from rlr_engine.method.forward_choice import ForwardTuner, graphed_median_seconds, median_seconds, tunes_forwards
from rlr_engine.method.lowrank import ParameterReport, low_rank_layers, parameter_report
from rlr_engine.run.checkpoint import load_model_state
from rlr_engine.run.distributed import SINGLE, Ranks
from rlr_engine.run.network import build_network, load_run_data
from rlr_engine.run.step_graph import StepGraph, capture_key, graphs_wanted
from rlr_engine.workload.attacks import adversarial_correct
from rlr_engine.workload.data import ImageData, augment, to_float
from rlr_engine.workload.spectra import layer_stats

__all__ = ["Trainer", "build_network", "describe_device", "load_run_data", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            "device = 'cuda' was asked for but no CUDA GPU is available; use device = 'cpu' or 'auto'"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"device = {name!r} was asked for but only {torch.cuda.device_count()} CUDA GPU(s) are visible "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(list(value) if isinstance(value, tuple) else value)


def _host_copy(value: Any) -> Any:
    """``value`` with every tensor in it copied to host memory (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        copied = type(value)((key, _host_copy(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # a module's state_dict: its layout versions
            copied._metadata = value._metadata  # type: ignore[attr-defined]
        return copied
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(item) for item in value)
    return value


class Trainer:
    """One run's training state on one device.

    A *window* accumulates the loss, correct count and finiteness of the steps since it was last
    read, on the device: ``read_window()`` is the one host synchronisation.

    ``pretrained``: the network gets its starting weights (network.build_network); a run that
    resumes loads its checkpoint instead.

    Under torch.distributed (``ranks``, see distributed.py) every rank holds the whole model and
    data, trains on its shard of each global batch through DistributedDataParallel, and shards
    evaluation and attacks; the window, evaluation and attack counts are summed over ranks, so
    every rank reads the same numbers. ``model`` is always the bare module (checkpoints do not
    depend on the number of processes); ``train_module`` is what the training forward uses.
    """

    def __init__(
        self, config: RunConfig, data: ImageData, device: torch.device, ranks: Ranks = SINGLE, pretrained: bool = True
    ) -> None:
        self.config, self.data, self.device, self.ranks = config, data, device, ranks
        torch.manual_seed(config.seed)
        # What the network started from (weights, warm start, conversion): the run's first events.
        self.build_notes: list[str] = []
        self.model = build_network(config, data, pretrained, self.build_notes).to(device)
        self.train_module: nn.Module = self.model
        self._wrapped: tuple[int, ...] = ()
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        # Attacks run on seeded subsets of the test set, one drawn order: the first attack_samples
        # images during training, the first final_samples at the end (0: all).
        order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(config.seed + 1)).to(device)
        self.attack_indices = order[: config.attack_samples] if config.attack_samples else order
        self.final_attack_indices = order[: config.final_samples] if config.final_samples else None
        self.permutation: torch.Tensor | None = None
        self.steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.step = 0
        self.epoch = 0
        self.position = 0
        self._theta = config.truncate_theta
        self.adaptation: RankAdaptation | None = None  # rank-adaptive methods only
        self.rank_changes: list[RankChange] = []  # what rank adaptation changed since the engine last looked
        # The step as a CUDA graph (step_graph.py): fixed-rank methods in one process only, where
        # nothing in the step decides on the host (the config refuses "on" for the others); their
        # CondLR is then capturable.
        self._graphed = graphs_wanted(config.cuda_graphs, device, ranks.world_size)
        self.optimizer, self.scheduler = self._build_optimizer()
        self.report: ParameterReport = parameter_report(self.model)
        self._loss_sum = torch.zeros((), device=device)
        self._correct = torch.zeros((), dtype=torch.long, device=device)
        self._finite = torch.ones((), dtype=torch.bool, device=device)
        self.window_samples = 0
        # Each low-rank layer's forward: the one asked for, or with "auto" on an accelerator the
        # faster one, timed at the first step and after a truncation (forward_choice.py) — as the
        # step runs: replayed from a CUDA graph or eagerly.
        self._low_rank = [layer for _, layer in low_rank_layers(self.model)]
        self._tuner: ForwardTuner | None = None
        if tunes_forwards(config.low_rank_forward, device, config.compile):
            self._tuner = ForwardTuner(graphed_median_seconds if self._graphed else median_seconds)
        self._tuned_storage: tuple[int, ...] | None = None  # the allocated ranks last timed at
        self.forward_notes: list[str] = []  # choices timed since the engine last looked
        if config.low_rank_forward != "auto":
            for layer in self._low_rank:
                layer.set_forward_mode(config.low_rank_forward)
        self._wrap()
        self.step_graph: StepGraph | None = None
        if self._graphed:
            self.step_graph = StepGraph(
                lambda x, y: self._forward_backward_step(x, y, 1.0 / len(y)),
                lambda: self.model.zero_grad(set_to_none=True),
                lambda: self.condlr.refresh_hyperparameters(),  # the optimizer of the moment (a resume rebuilds it)
            )

    def _wrap(self) -> None:
        """(Re)build DistributedDataParallel when the parameter objects changed (a truncation or
        a checkpoint of another rank replaced U, S, V: DDP's gradient hooks are bound to the
        parameter objects it was built with). Rebuilding is a collective, so it happens on every
        rank at the same step boundary; the optimizer already holds the new objects (CondLR swaps
        them). Layers that keep fixed storage and never replace parameters never rebuild."""
        params = tuple(id(p) for p in self.model.parameters())
        if params != self._wrapped:
            self.train_module = self.ranks.wrap(self.model, self.device)
            self._wrapped = params

    def unwrap(self) -> None:
        """Drop DistributedDataParallel, and with it its reducer's hold on the process group, so
        that destroying the group (distributed.leave_process_group) destroys it now. A wrapper
        left alive keeps the group's worker threads until the interpreter shuts down, and a
        thread that takes the GIL then is ended mid-destructor: "terminate called without an
        active exception", SIGABRT, after the run had finished."""
        self.train_module = self.model
        self._wrapped = ()

    def _build_optimizer(
        self, restoring: bool = False
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
        """CondLR for fixed-rank methods; for rank-adaptive ones the core optimizer (SGD or AdamW
        over the cores and every other parameter) driven by a RankAdaptation (adaptive.py).
        ``restoring``: the model holds a checkpoint's weights, which stay as they were saved."""
        c = self.config
        if c.is_rank_adaptive:
            optimizer = core_optimizer(self.model, c.core_optimizer, c.lr, c.momentum, c.weight_decay)
            self.adaptation = RankAdaptation(
                self.model,
                optimizer,
                c.method,
                c.adapt_every,
                self._theta,
                c.beta,
                c.tau,
                c.min_rank,
                project_initial=not restoring,
            )
        else:
            optimizer = CondLR(
                self.model,
                lr=c.lr,
                momentum=c.momentum,
                tau=c.tau,
                weight_decay=c.weight_decay,
                step_scaling=c.step_scaling,
                reference_compat=c.reference_compat,
                capturable=self._graphed,
            )
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, list(c.milestones), c.gamma)

    # -- hyperparameters ------------------------------------------------------------------------
    @property
    def condlr(self) -> CondLR:
        """The optimizer of a fixed-rank run (dense included: a CondLR without low-rank layers).
        Rank-adaptive runs step a core optimizer instead and have none."""
        if not isinstance(self.optimizer, CondLR):
            raise TypeError(f"a {self.config.method} run steps {type(self.optimizer).__name__}, not CondLR")
        return self.optimizer

    @property
    def tau(self) -> float:
        return self.adaptation.tau if self.adaptation is not None else self.condlr.tau

    @property
    def theta(self) -> float:
        return self.adaptation.theta if self.adaptation is not None else self._theta

    @property
    def beta(self) -> float | None:
        return self.adaptation.beta if self.adaptation is not None else None

    @property
    def adapt_every(self) -> int | None:
        return self.adaptation.adapt_every if self.adaptation is not None else None

    def set_adaptation(self, beta: Any = None, adapt_every: Any = None, theta: Any = None) -> None:
        """Change β, the window k or θ of a rank-adaptive run (validated first: a bad value
        changes nothing)."""
        if self.adaptation is None:
            raise ValueError(f"beta and the window apply to rank-adaptive methods only (method = {self.config.method})")
        values = {
            "beta": check_beta(beta) if beta is not None else None,
            "adapt_every": check_adapt_every(adapt_every) if adapt_every is not None else None,
            "theta": check_theta(theta) if theta is not None else None,
        }
        for name, value in values.items():
            if value is not None:
                setattr(self.adaptation, name, value)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_tau(self, tau: Any) -> None:
        if self.adaptation is not None:
            self.adaptation.tau = tau  # condlr-adaptive: from the next window boundary on
        else:
            self.condlr.set_tau(tau)

    def set_lr(self, lr: Any) -> None:
        lr = check_lr(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)

    @property
    def execution(self) -> list[str]:
        """How the step runs beyond its device: "bf16" (autocast), "CUDA graph" (captured), or neither."""
        return (["bf16"] if self.config.precision == "bf16" else []) + (
            ["CUDA graph"] if self.step_graph is not None else []
        )

    # -- training -------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    @property
    def epoch_complete(self) -> bool:
        return self.position >= len(self.data.train)

    def train_step(self) -> bool:
        """One optimisation step; False when the optimizer met non-finite values."""
        config, data = self.config, self.data
        if self.permutation is None:
            self.permutation = torch.randperm(len(data.train), device=self.device, generator=self.generator)
        batch = self.permutation[self.position : self.position + config.batch_size]
        n = len(batch)
        images = data.train.images[batch]
        if data.crop_padding or data.flip:
            # Augmented on the whole global batch so every rank draws the same random numbers.
            images = augment(images, data.crop_padding, data.flip, self.generator)
        mine = self.ranks.shard(n)
        x, y = to_float(images[mine]), data.train.labels[batch[mine]]
        self._tune_forwards(x)
        try:
            if self.step_graph is not None:
                loss_sum, logits = self.step_graph(x, y, lambda: capture_key(self.model, self.condlr, tuple(x.shape)))
            else:
                # The model's, not only the optimizer's: a rank-adaptive optimizer does not hold U
                # and V, whose gradients (left by an attack's backward passes too) the augmentation reads.
                self.model.zero_grad(set_to_none=True)
                # W/n · Σ_shard ℓ: DDP's average over the W ranks makes it the global batch mean (distributed.py).
                loss_sum, logits = self._forward_backward_step(x, y, self.ranks.world_size / n)
        except torch.linalg.LinAlgError:
            # The SVD of a core fails on non-finite values: divergence detected early, not a crash.
            self._finite.fill_(False)
            return False
        with torch.no_grad():
            detached = loss_sum.detach()
            self._loss_sum += detached
            self._correct += (logits.argmax(1) == y).sum()
            self._finite &= torch.isfinite(detached)
        self.window_samples += n
        self.position += n
        self.step += 1
        return True

    def _tune_forwards(self, x: torch.Tensor) -> None:
        """With low_rank_forward = "auto" on an accelerator, give every low-rank layer its faster
        forward on batches like ``x`` at the first step and when a truncation has reallocated a
        layer (a rank seen before is not timed again); what was timed becomes a line of
        ``forward_notes``. Not when a rank-adaptive window moves a live rank within the layer's
        storage: that happens every window, and timing every layer again each time would cost
        more than a well-chosen forward saves. Under torch.distributed rank 0 times and every rank
        takes its choice."""
        if self._tuner is None:
            return
        storage = tuple(layer.max_rank for layer in self._low_rank)
        if storage == self._tuned_storage:
            return
        self._tuned_storage = storage
        autocast = torch.bfloat16 if self.config.precision == "bf16" else None
        timed = self._tuner.tune(self.model, x, autocast) if self.ranks.is_main else []
        if self.ranks.distributed:  # rank 0's choice on every rank (at the same step: truncations are collective)
            modes = self.ranks.broadcast([layer.forward_mode for layer in self._low_rank])
            for layer, mode in zip(self._low_rank, modes):
                layer.set_forward_mode(mode)
        if timed:
            choices = ", ".join(choice.describe() for choice in timed)
            self.forward_notes.append(f"low-rank forward per layer, timed on {self.device}: {choices}")

    def take_forward_notes(self) -> list[str]:
        """The lines on forward choices made since the last call."""
        notes, self.forward_notes = self.forward_notes, []
        return notes

    def _forward_backward_step(
        self, x: torch.Tensor, y: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss Σℓ·``scale``, backward and optimizer step on gradients set to None by the
        caller; returns (Σℓ, logits), detached. What ``step_graph`` captures."""
        # bf16: the forward (and so the backward) in bfloat16 where autocast allows it; the loss
        # from float32 logits, the parameters, gradients and the optimizer step in float32.
        # Under a CUDA graph without autocast's cast cache, which PyTorch does not support in a
        # capture (make_graphed_callables refuses it); each weight is cast once per step anyway.
        bf16 = self.config.precision == "bf16"
        with torch.autocast(self.device.type, torch.bfloat16, enabled=bf16, cache_enabled=not self._graphed):
            logits = self.train_module(x)
        logits = logits.float()
        loss_sum = F.cross_entropy(logits, y, reduction="sum")
        loss = loss_sum * scale
        if self.adaptation is not None:
            loss = loss + self.adaptation.regularizer()  # soft conditioning β (reported loss: cross-entropy)
        loss.backward()
        if self.adaptation is not None:
            self._note_rank_changes(self.adaptation.step())
        else:
            self.optimizer.step()
        return loss_sum.detach(), logits.detach()

    def end_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self.permutation = None
        self.scheduler.step()

    def read_window(self) -> tuple[float, float, int]:
        """(mean loss, accuracy, samples) of the steps since the last read; the window restarts.
        Finiteness is kept until ``take_finite()`` reads it."""
        n = self.window_samples
        if self.ranks.distributed:
            # One all-reduce: loss sum, correct count and non-finite count over all ranks.
            totals = self.ranks.sum(
                torch.stack([self._loss_sum.double(), self._correct.double(), (~self._finite).double()])
            )
            self._finite.fill_(bool(totals[2] == 0))
            loss, correct = float(totals[0]) / max(n, 1), float(totals[1]) / max(n, 1)
        else:
            loss, correct = (self._loss_sum / max(n, 1)).item(), self._correct.item() / max(n, 1)
        self._loss_sum.zero_()
        self._correct.zero_()
        self.window_samples = 0
        return loss, correct, n

    def take_finite(self) -> bool:
        """Whether every step since the last call had a finite loss and a finite update."""
        finite = bool(self._finite)
        self._finite.fill_(True)
        return finite

    def parameters_finite(self) -> bool:
        return all(torch.isfinite(p).all() for p in self.model.parameters())

    # -- measuring ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_split(self, split) -> tuple[float, float]:
        if len(split) == 0:
            return math.nan, math.nan
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, correct count
        mine = self.ranks.shard(len(split))
        images, labels = split.images[mine], split.labels[mine]
        for start in range(0, len(labels), 1000):
            x = to_float(images[start : start + 1000])
            y = labels[start : start + 1000]
            logits = self.model(x)
            totals[0] += F.cross_entropy(logits, y, reduction="sum")
            totals[1] += (logits.argmax(1) == y).sum()
        self.model.train()
        loss, correct = self.ranks.sum(totals).tolist()
        return loss / len(split), correct / len(split)

    def evaluate(self) -> tuple[float, float, float]:
        """(validation loss, validation accuracy, test accuracy)."""
        val_loss, val_acc = self.evaluate_split(self.data.val)
        _, test_acc = self.evaluate_split(self.data.test)
        return val_loss, val_acc, test_acc

    def attack(self, spec: AttackSpec, final: bool, seed: int) -> tuple[tuple[float, ...], int]:
        """Accuracy per ε of ``spec`` on the run's seeded subset of the test set (``final``: the
        final attack's, ``final_attack_samples``), its random draws started from ``seed``, and
        the number of images attacked."""
        images, labels = self.data.test.images, self.data.test.labels
        indices = self.final_attack_indices if final else self.attack_indices
        if indices is not None:
            images, labels = images[indices], labels[indices]
        mine = self.ranks.shard(len(labels))
        correct = adversarial_correct(self.model, images[mine], labels[mine], spec, to_input=to_float, seed=seed)
        counts = self.ranks.sum(torch.stack([correct[e] for e in spec.eps]))
        n = max(len(labels), 1)
        return tuple(c / n for c in counts.tolist()), len(labels)

    def layer_stats(self) -> tuple[LayerStats, ...]:
        return layer_stats(self.model)

    def _note_rank_changes(self, changes: list[RankChange]) -> None:
        if any(c.new_rank != c.old_rank for c in changes):
            self.report = parameter_report(self.model)
        self.rank_changes += changes

    @property
    def at_window_boundary(self) -> bool:
        """True unless a rank-adaptive window is under way. Inside a window of robust-dlrt the
        augmented directions are still near zero, so κ(S) of the live core says nothing of W:
        spectra are read at boundaries only."""
        return self.adaptation is None or self.adaptation.position == 0

    def take_rank_changes(self) -> list[RankChange]:
        """The RankChanges of the windows that ended since the last call (rank-adaptive runs)."""
        changes, self.rank_changes = self.rank_changes, []
        return changes

    def condition_for_measuring(self) -> None:
        """Before an evaluation, attack or checkpoint: a condlr-adaptive run ends its window so
        what is measured or saved has κ(S) ≤ 1 + τ (adaptive.RankAdaptation.before_evaluation)."""
        if self.adaptation is not None:
            self._note_rank_changes(self.adaptation.before_evaluation())

    # -- structure ------------------------------------------------------------------------------
    def truncate(
        self, theta: float | None, rank: int | None, layer: str | None
    ) -> tuple[float | None, list[RankChange]]:
        """Truncate with relative tolerance θ (None: the run's current θ) or to ``rank``; returns
        the θ used and every layer's change. ValueError (nothing changed) for a bad request."""
        if self.adaptation is not None:
            if rank is not None or layer is not None:
                raise ValueError(
                    f"{self.config.method} truncates every layer with θ at its window boundary; give θ only"
                )
            if theta is not None:
                self.adaptation.theta = theta
            changes = self.adaptation.end_window()
            self.report = parameter_report(self.model)
            return self.adaptation.theta, changes
        if not self.condlr.layers:
            raise ValueError("this model has no low-rank layers to truncate (method = dense)")
        if theta is not None and rank is not None:
            raise ValueError("give either theta or rank, not both")
        if theta is None and rank is None:
            theta = self.theta
        if theta is not None:
            theta = check_theta(theta)
        changes = self.condlr.truncate(
            theta=theta, rank=rank, layers=None if layer is None else [layer], min_rank=self.config.min_rank
        )
        if theta is not None:
            self._theta = float(theta)
        self.report = parameter_report(self.model)
        self._wrap()
        return theta, changes

    # -- checkpoint payload ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "permutation": None if self.permutation is None else self.permutation.cpu(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "theta": self.theta,
            "adaptation": None if self.adaptation is None else self.adaptation.state_dict(),
        }

    def steering_state(self) -> dict[str, Any]:
        """A copy, in host memory, of everything a live change (τ, learning rate, truncation and
        θ, β or the window) alters: the weights at their ranks, the optimizer's state and
        hyperparameters, θ and the rank adaptation's state. Not the step, data order, RNGs or
        the scheduler's epoch count: restoring it (``restore_steering_state``) brings the model
        back while training goes on from the current step."""
        return _host_copy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "theta": self.theta,
                "adaptation": None if self.adaptation is None else self.adaptation.state_dict(),
            }
        )

    def restore_steering_state(self, state: dict[str, Any]) -> None:
        """Bring back a ``steering_state()``: the same path as a checkpoint's load (the ranks, hence
        the parameter objects, may differ), keeping the step, data order and scheduler."""
        self._restore_weights(state, "the undo history", self.scheduler.state_dict())

    def _restore_weights(self, payload: dict[str, Any], source: str, scheduler_state: dict[str, Any]) -> None:
        """Model, optimizer (rebuilt: a truncation swaps parameter objects, which the optimizer,
        the rank adaptation and DistributedDataParallel hold), scheduler, θ and adaptation."""
        load_model_state(self.model, payload, source)
        self.report = parameter_report(self.model)
        self.optimizer, self.scheduler = self._build_optimizer(restoring=True)  # the ranks may have changed
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(scheduler_state)
        if self.adaptation is not None and payload.get("adaptation") is not None:
            self.adaptation.load_state_dict(payload["adaptation"])
        self._wrap()
        self._theta = payload["theta"]

    def load_state_dict(self, payload: dict[str, Any], source: str) -> list[str]:
        """Restore a checkpoint's state; returns warnings about what could not be restored as saved."""
        warnings = []
        self._restore_weights(payload, source, payload["scheduler"])
        self.step, self.epoch, self.position = payload["step"], payload["epoch"], payload["position"]
        perm = payload["permutation"]
        self.permutation = None if perm is None else perm.to(self.device)
        # RNG states must be CPU byte tensors, whatever map_location did to the rest.
        generator_state = payload["generator"].cpu()
        if generator_state.numel() == self.generator.get_state().numel():
            self.generator.set_state(generator_state)
        else:
            # A generator's state is the device's own (the CPU's Mersenne Twister, CUDA's seed and
            # offset): a run moved between them draws on from a seed of its step instead.
            self.generator.manual_seed(self.config.seed + self.step)
            warnings.append(
                f"the checkpoint's data-order generator belongs to another kind of device than "
                f"{self.device.type}: batches and augmentation from step {self.step} on are drawn "
                f"afresh (the current epoch keeps its order)"
            )
        torch.set_rng_state(payload["torch_rng"].cpu())
        if payload.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(payload["cuda_rng"].cpu(), self.device)
        self.window_samples = 0
        self._loss_sum.zero_()
        self._correct.zero_()
        self._finite.fill_(True)
        return warnings

    def set_restored(self, config: RunConfig, keys: Iterable[str]) -> list[str]:
        """Set each of ``keys`` (presets.RESTORED_ON_RESUME) to its value in ``config``, over what a
        checkpoint restored; returns "key: old → new" for each that changed. ValueError (nothing
        changed) for a value this run cannot take."""
        keys = set(keys)
        adaptation = self.adaptation
        if adaptation is not None and "min_rank" in keys:
            adaptation.check_min_rank(config.min_rank)
        changes = []

        def note(key: str, old: Any, new: Any) -> None:
            if old != new:
                changes.append(f"{key}: {_shown(old)} → {_shown(new)}")

        for key in sorted(keys):
            value = getattr(config, key)
            if key == "tau":
                if adaptation is not None and not adaptation.uses_tau:
                    continue  # robust-dlrt has no τ (a new run ignores the key too)
                note(key, self.tau, value)
                self.set_tau(value)
            elif key == "lr":
                note(key, self.lr, value)
                self.set_lr(value)
            elif key in ("momentum", "weight_decay"):
                groups = [g for g in self.optimizer.param_groups if key in g]
                if groups:
                    note(key, groups[0][key], value)
                for group in groups:
                    group[key] = value
            elif key == "milestones":
                note(key, tuple(sorted(self.scheduler.milestones.elements())), value)
                self.scheduler.milestones = Counter(value)
            elif key == "gamma":
                note(key, self.scheduler.gamma, value)
                self.scheduler.gamma = value
            elif key == "truncate_theta":
                note(key, self.theta, value)
                if adaptation is not None:
                    adaptation.theta = value
                else:
                    self._theta = value
            elif adaptation is not None:  # beta, adapt_every, min_rank: rank-adaptive runs only
                note(key, getattr(adaptation, key), value)
                setattr(adaptation, key, value)
        return changes
