"""The training engine: a background thread that trains, measures and attacks.

Commands come in through one thread-safe queue and are applied between steps; snapshots go out
as immutable records through an atomic reference swap (``latest()``), at a bounded rate. The
engine never waits for whoever reads them.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
import traceback
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import AttackSpec, adversarial_accuracy
from .checkpoint import CheckpointError, load_checkpoint, load_model_state, save_atomic
from .condlr import CondLR
from .data import DatasetUnavailable, ImageData, augment, load_dataset, to_float
from .history import DecimatingSeries
from .lowrank import parameter_report, to_low_rank
from .models import build_model, use_channels_last
from .presets import RunConfig
from .records import (AttackNow, AttackResult, Command, Event, Pause, Resume, SaveCheckpoint,
                      SetLearningRate, SetTau, Snapshot, Stop, Truncate)
from .runs import CHECKPOINT, EVENTS, METRICS, SUMMARY, append_jsonl, read_jsonl, trim_jsonl
from .spectra import compressible_layers, layer_stats, lipschitz_upper_bound
from .validation import check_lr, check_theta

CURVES = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc")
SPECTRA_INTERVAL_S = 1.0
MAX_EVENTS = 200


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DatasetUnavailable("device = 'cuda' was asked for but no CUDA GPU is available; "
                                 "use device = 'cpu' or 'auto'")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def build_network(config: RunConfig, data: ImageData) -> nn.Module:
    """The preset's model for this data, converted to low rank when the method asks for it."""
    model = build_model(config.model, data.channels, data.num_classes, data.image_size, data.mean, data.std)
    if config.is_low_rank:
        ranks = None
        if config.last_layer == "full-rank":
            last_name, last = [(n, m) for n, m in compressible_layers(model)][-1]
            weight = last.weight
            ranks = {last_name: min(weight.shape[0], weight[0].numel())}
        to_low_rank(model, config.rank_fraction, ranks=ranks, skip_last=True)
    if config.channels_last:
        use_channels_last(model)
    return model


def load_evaluation_target(checkpoint: str | Path, samples: int = 0, device: str = "auto",
                           data_dir: str | None = None):
    """Load a saved model with the config stored beside it, in eval mode, and its test set (or a
    seeded subset of ``samples`` images) for attacking.
    Returns (config, step, model, uint8 images, labels)."""
    from .presets import validate

    dev = resolve_device(device)
    payload = load_checkpoint(checkpoint, dev)
    config = validate(payload["config"], source=f"{checkpoint} (stored config)")
    data = load_dataset(config.dataset, data_dir or config.data_dir, config.download, config.val_fraction,
                        config.seed, dev)
    model = build_network(config, data).to(dev)
    load_model_state(model, payload, checkpoint)
    images, labels = data.test.images, data.test.labels
    if samples:
        subset = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:samples].to(dev)
        images, labels = images[subset], labels[subset]
    return config, payload["step"], model.eval(), images, labels


class Engine:
    """Trains one run in a background thread.

    ``send(command)`` queues a command (applied at the next step boundary and acknowledged by an
    event); ``latest()`` returns the newest Snapshot. With ``resume=True`` the run continues from
    ``run_dir/checkpoint.pt``: same step counter, optimizer state, ranks, τ and RNG.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, resume: bool = False) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume_requested = resume
        self._commands: queue.Queue[Command] = queue.Queue()
        self._latest = Snapshot(preset=config.name, method=config.method_label, dataset=config.dataset,
                                model=config.model, run_dir=str(self.run_dir), epochs=config.epochs,
                                tau=config.tau, theta=config.truncate_theta, lr=config.lr)
        self._thread: threading.Thread | None = None
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._event_seq = 0
        self.state = "starting"
        self.message = ""
        self.step = 0
        self.epoch = 0
        self.position = 0
        self.theta = config.truncate_theta
        self._version = 0
        self._stop = False
        self._diverged = False
        self.curves = {name: DecimatingSeries() for name in CURVES}
        self.attack_history: list[AttackResult] = []
        self.last_values: dict[str, float | None] = {name: None for name in CURVES}
        self.last_checkpoint_step: int | None = None

    # -- public, thread-safe -----------------------------------------------------------------
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name=f"rlr-engine-{self.config.name}", daemon=True)
        self._thread.start()
        return self

    def send(self, command: Command) -> None:
        self._commands.put(command)

    def latest(self) -> Snapshot:
        return self._latest

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask for a clean stop (final checkpoint) and wait for it."""
        self.send(Stop())
        return self.join(timeout)

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._setup()
            self._loop()
            self._finish()
        except (DatasetUnavailable, CheckpointError) as error:
            self._fail(str(error))
        except Exception as error:  # report, never die silently
            (self.run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            self._fail(f"{type(error).__name__}: {error} (traceback in {self.run_dir / 'error.log'})")

    def _fail(self, message: str) -> None:
        self.state, self.message = "failed", message
        self._event("error", message)
        self._publish(with_layers=False)

    def _setup(self) -> None:
        config = self.config
        self.device = resolve_device(config.device)
        self.device_name = describe_device(self.device)
        self._publish(with_layers=False)
        self.data = load_dataset(config.dataset, config.data_dir, config.download, config.val_fraction,
                                 config.seed, self.device)
        torch.manual_seed(config.seed)
        self.model = build_network(config, self.data).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        n_test = len(self.data.test)
        subset = torch.randperm(n_test, generator=torch.Generator().manual_seed(config.seed + 1))
        if config.attack_samples:
            subset = subset[:config.attack_samples]
        self.attack_indices = subset.to(self.device)
        self.permutation: torch.Tensor | None = None
        self.steps_per_epoch = math.ceil(len(self.data.train) / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self._build_optimizer()
        if self.resume_requested:
            self._restore(load_checkpoint(self.run_dir / CHECKPOINT, self.device), resumed=True)
        self._reset_window()
        self._refresh_structure()
        self._layers_at = time.monotonic()
        self._spectra_interval = SPECTRA_INTERVAL_S
        self.state = "running"
        self._event("info", f"{'resumed' if self.resume_requested else 'started'} {config.name} "
                            f"({config.method_label}) on {self.device_name} at step {self.step}")

    def _build_optimizer(self) -> None:
        c = self.config
        self.optimizer = CondLR(self.model, lr=c.lr, momentum=c.momentum, tau=c.tau,
                                weight_decay=c.weight_decay, step_scaling=c.step_scaling,
                                reference_compat=c.reference_compat)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(c.milestones), c.gamma)

    def _loop(self) -> None:
        while True:
            self._apply_commands(block=self.state == "paused")
            if self._stop:
                return
            if self.state == "paused":
                continue
            if self.step >= self.total_steps:
                return
            if not self._train_step():
                self._flush_window()
                self._check_finite()
                self._publish()
                continue
            if self.position >= len(self.data.train):
                self._end_epoch()
            self._maybe_publish()

    # -- training ----------------------------------------------------------------------------
    def _reset_window(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        self._window_samples = 0
        self._window_start = time.monotonic()

    def _train_step(self) -> bool:
        """One optimisation step; False when the optimizer met non-finite values."""
        config, data = self.config, self.data
        if self.permutation is None:
            self.permutation = torch.randperm(len(data.train), device=self.device, generator=self.generator)
        index = self.permutation[self.position:self.position + config.batch_size]
        images = data.train.images[index]
        if data.crop_padding or data.flip:
            images = augment(images, data.crop_padding, data.flip, self.generator)
        x, y = to_float(images), data.train.labels[index]
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        try:
            self.optimizer.step()
        except torch.linalg.LinAlgError:
            # The SVD of a core fails on non-finite values: divergence detected early, not a crash.
            self._finite.fill_(False)
            return False
        with torch.no_grad():
            detached = loss.detach()
            self._loss_sum += detached * len(y)
            self._correct += (logits.argmax(1) == y).sum()
            self._finite &= torch.isfinite(detached)
        self._window_samples += len(y)
        self.position += len(y)
        self.step += 1
        return True

    def _end_epoch(self) -> None:
        config = self.config
        self.epoch += 1
        self.position = 0
        self.permutation = None
        self.scheduler.step()
        self._flush_window()
        if self._check_finite():
            return
        last = self.epoch >= config.epochs or self.step >= self.total_steps
        if config.truncate_every and self.epoch % config.truncate_every == 0 and self.config.is_low_rank:
            self._truncate(Truncate(theta=self.theta), scheduled=True)
        if (config.eval_every and self.epoch % config.eval_every == 0) or last:
            self._evaluate()
        if config.attack_every and self.epoch % config.attack_every == 0 and not last:
            self._attack(config.attack_spec(), full=False)
        if config.checkpoint_every and self.epoch % config.checkpoint_every == 0:
            self._checkpoint()

    @torch.no_grad()
    def _evaluate_split(self, split) -> tuple[float, float]:
        if len(split) == 0:
            return math.nan, math.nan
        self.model.eval()
        loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for start in range(0, len(split), 1000):
            x = to_float(split.images[start:start + 1000])
            y = split.labels[start:start + 1000]
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        self.model.train()
        return loss.item() / len(split), correct.item() / len(split)

    def _evaluate(self) -> None:
        val_loss, val_acc = self._evaluate_split(self.data.val)
        _, test_acc = self._evaluate_split(self.data.test)
        for name, value in (("val_loss", val_loss), ("val_acc", val_acc), ("test_acc", test_acc)):
            if not math.isnan(value):
                self.curves[name].append(self.step, value)
                self.last_values[name] = value
        append_jsonl(self.run_dir / METRICS, {"type": "eval", "step": self.step, "epoch": self.epoch,
                                              "val_loss": val_loss, "val_acc": val_acc, "test_acc": test_acc})
        self._event("evaluation", f"epoch {self.epoch}: val acc {val_acc:.2%}, test acc {test_acc:.2%}")
        self._layer_stats = layer_stats(self.model)
        append_jsonl(self.run_dir / METRICS, {"type": "layers", "step": self.step, "layers": [
            {"name": s.name, "rank": s.rank, "full_rank": s.full_rank, "kappa": s.kappa,
             "sigma_max": s.sigma_max} for s in self._layer_stats]})

    def _attack(self, spec: AttackSpec, full: bool) -> AttackResult:
        images, labels = self.data.test.images, self.data.test.labels
        if not full:
            images, labels = images[self.attack_indices], labels[self.attack_indices]
        accuracy = adversarial_accuracy(self.model, images, labels, spec, to_input=to_float)
        result = AttackResult(self.step, self.epoch, spec.name, tuple(spec.eps),
                              tuple(accuracy[e] for e in spec.eps))
        self.attack_history.append(result)
        append_jsonl(self.run_dir / METRICS, {"type": "attack", "step": self.step, "epoch": self.epoch,
                                              "attack": spec.name, "samples": len(labels),
                                              "eps": list(spec.eps), "accuracy": list(result.accuracy)})
        pairs = ", ".join(f"{e:g}: {a:.1%}" for e, a in zip(spec.eps, result.accuracy))
        self._event("attack", f"{spec.name} on {len(labels)} test images: {pairs}")
        self._publish()
        return result

    # -- commands ----------------------------------------------------------------------------
    def _apply_commands(self, block: bool) -> None:
        while True:
            try:
                command = self._commands.get(timeout=0.2) if block else self._commands.get_nowait()
            except queue.Empty:
                return
            block = False
            try:
                self._apply(command)
            except ValueError as error:
                self._event("rejected", f"{command.kind}: {error}")
            self._publish(with_layers=isinstance(command, (SetTau, Truncate)))

    def _apply(self, command: Command) -> None:
        if isinstance(command, SetTau):
            old = self.optimizer.tau
            self.optimizer.set_tau(command.tau)
            self._event("applied", f"τ: {old:g} → {self.optimizer.tau:g}")
        elif isinstance(command, SetLearningRate):
            lr = check_lr(command.lr)
            old = self.optimizer.param_groups[0]["lr"]
            for group in self.optimizer.param_groups:
                group["lr"] = float(lr)
            self._event("applied", f"learning rate: {old:g} → {lr:g}")
        elif isinstance(command, Truncate):
            self._truncate(command, scheduled=False)
        elif isinstance(command, Pause):
            if self.state != "running":
                raise ValueError(f"cannot pause: the run is {self.state}")
            self.state = "paused"
            self._flush_window()
            self._event("applied", f"paused at step {self.step}")
        elif isinstance(command, Resume):
            self._resume()
        elif isinstance(command, AttackNow):
            spec = self.config.attack_spec(command.attack, command.eps)
            self._event("applied", f"attack {spec.name} at step {self.step}")
            paused_at = time.monotonic()
            self._attack(spec, full=False)
            self._window_start += time.monotonic() - paused_at
        elif isinstance(command, SaveCheckpoint):
            if not self._checkpoint():
                raise ValueError("the model holds non-finite values; the last good checkpoint is kept")
        elif isinstance(command, Stop):
            self._stop = True
        else:
            raise ValueError(f"unknown command {command!r}")

    def _resume(self) -> None:
        if self.state != "paused":
            raise ValueError(f"cannot resume: the run is {self.state}")
        if self._diverged:
            if self.last_checkpoint_step is None and not (self.run_dir / CHECKPOINT).is_file():
                raise ValueError("training diverged and there is no good checkpoint to roll back to; "
                                 "stop and start again with a lower learning rate")
            tau, lr = self.optimizer.tau, self.optimizer.param_groups[0]["lr"]
            self._restore(load_checkpoint(self.run_dir / CHECKPOINT, self.device), resumed=False)
            self.optimizer.set_tau(tau)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._diverged = False
            self._event("applied", f"rolled back to the checkpoint at step {self.step} (τ {tau:g}, lr {lr:g})")
        self.state = "running"
        self._reset_window()
        self._event("applied", f"resumed at step {self.step}")

    def _truncate(self, command: Truncate, scheduled: bool) -> None:
        if not self.optimizer.layers:
            raise ValueError("this model has no low-rank layers to truncate (method = dense)")
        if command.theta is not None and command.rank is not None:
            raise ValueError("give either theta or rank, not both")
        theta = self.theta if command.theta is None and command.rank is None else command.theta
        if theta is not None:
            theta = check_theta(theta)
        changes = self.optimizer.truncate(theta=theta, rank=command.rank,
                                          layers=None if command.layer is None else [command.layer],
                                          min_rank=self.config.min_rank)
        if theta is not None:
            self.theta = float(theta)
        changed = [c for c in changes if c.new_rank != c.old_rank]
        what = "scheduled truncation" if scheduled else "truncation"
        rule = f"θ = {theta:g}" if theta is not None else f"rank {command.rank}"
        if not changed:
            self._event("truncation", f"{what} ({rule}): no rank changed")
        for change in changed:
            self._event("truncation", f"{change.layer}: rank {change.old_rank} → {change.new_rank} "
                                      f"(‖ΔW‖_F = {change.discarded_norm:.3g})")
        self._refresh_structure()

    # -- divergence, checkpoints -------------------------------------------------------------
    def _check_finite(self) -> bool:
        """True (and paused) when a non-finite loss or weight appeared since the last check."""
        if bool(self._finite):
            return False
        self._diverged = True
        self.state = "paused"
        where = (f"the last good checkpoint (step {self.last_checkpoint_step}) is kept"
                 if self.last_checkpoint_step is not None else "no checkpoint was written yet")
        self._event("error", f"non-finite loss near step {self.step}: training paused; {where}. "
                             f"Lower the learning rate and resume to roll back.")
        self._reset_window()
        return True

    def _checkpoint(self) -> bool:
        if self._diverged or not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._event("warning", "checkpoint skipped: the model holds non-finite values")
            return False
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "permutation": None if self.permutation is None else self.permutation.cpu(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "theta": self.theta,
            "curves": {name: series.state_dict() for name, series in self.curves.items()},
            "last_values": dict(self.last_values),
            "attack_history": [{"step": r.step, "epoch": r.epoch, "attack": r.attack, "eps": list(r.eps),
                                "accuracy": list(r.accuracy)} for r in self.attack_history],
            "config": self.config.to_dict(),
        }
        path = save_atomic(payload, self.run_dir / CHECKPOINT)
        self.last_checkpoint_step = self.step
        self._event("checkpoint", f"checkpoint at step {self.step} → {path}")
        return True

    def _refresh_structure(self) -> None:
        """Recount parameters and re-read spectra: needed only when ranks may have changed."""
        self._report = parameter_report(self.model)
        self._layer_stats = layer_stats(self.model)

    def _restore(self, payload: dict[str, Any], resumed: bool) -> None:
        load_model_state(self.model, payload, self.run_dir / CHECKPOINT)
        self._report = parameter_report(self.model)
        self._build_optimizer()
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step, self.epoch, self.position = payload["step"], payload["epoch"], payload["position"]
        perm = payload["permutation"]
        self.permutation = None if perm is None else perm.to(self.device)
        # RNG states must be CPU byte tensors, whatever map_location did to the rest.
        self.generator.set_state(payload["generator"].cpu())
        torch.set_rng_state(payload["torch_rng"].cpu())
        if payload.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(payload["cuda_rng"].cpu(), self.device)
        self.theta = payload["theta"]
        for name, state in payload["curves"].items():
            self.curves[name].load_state_dict(state)
        self.last_values = dict(payload["last_values"])
        self.attack_history = [AttackResult(r["step"], r["epoch"], r["attack"], tuple(r["eps"]),
                                            tuple(r["accuracy"])) for r in payload["attack_history"]]
        self.last_checkpoint_step = self.step
        if resumed:
            trim_jsonl(self.run_dir / METRICS, self.step)

    def _finish(self) -> None:
        config = self.config
        if self._stop:
            self._flush_window()
            self._checkpoint()
            self.state = "stopped"
            self._event("info", f"stopped at step {self.step}; resume with: rlr train --resume {self.run_dir}")
        else:
            self._flush_window()
            if self.position:  # max_steps ended the run mid-epoch
                self._evaluate()
            result = self._attack(config.attack_spec(), full=True)
            if self.last_checkpoint_step != self.step:
                self._checkpoint()
            self.state = "finished"
            self._write_summary(result)
            self._event("info", f"finished after {self.step} steps")
        self._publish()

    def _write_summary(self, result: AttackResult) -> None:
        report = self._report
        summary = {
            "state": "finished", "preset": self.config.name, "method": self.config.method_label,
            "dataset": self.config.dataset, "model": self.config.model, "steps": self.step,
            "epochs": self.epoch, "tau": self.optimizer.tau, "rank_fraction": report.rank_fraction,
            "params": report.params, "dense_params": report.dense_params, "compression": report.compression,
            "val_acc": self.last_values["val_acc"], "test_acc": self.last_values["test_acc"],
            "attack": result.attack, "eps": list(result.eps), "adversarial_accuracy": list(result.accuracy),
            "layers": [{"name": s.name, "rank": s.rank, "full_rank": s.full_rank, "kappa": s.kappa}
                       for s in self._layer_stats],
            "train_seconds": self._train_seconds(),
        }
        (self.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")

    def _train_seconds(self) -> float:
        """Wall time spent training (evaluations and attacks excluded), from the logged windows."""
        return sum(r.get("seconds", 0.0) for r in read_jsonl(self.run_dir / METRICS) if r.get("type") == "train")

    # -- snapshots ---------------------------------------------------------------------------
    def _event(self, kind: str, message: str) -> None:
        self._event_seq += 1
        event = Event(self._event_seq, self.step, time.time(), kind, message)
        self._events.append(event)
        try:
            append_jsonl(self.run_dir / EVENTS, event.to_dict())
        except OSError:
            pass  # the event is still shown; a full disk must not stop training

    def _flush_window(self) -> None:
        """Read the device-side training window (one host sync) into the curves and the log."""
        if not self._window_samples:
            self._window_start = time.monotonic()
            return
        elapsed = max(time.monotonic() - self._window_start, 1e-9)
        n = self._window_samples
        loss, correct = (self._loss_sum / n).item(), self._correct.item() / n
        self._throughput = n / elapsed
        if math.isfinite(loss):
            self.curves["train_loss"].append(self.step, loss)
            self.curves["train_acc"].append(self.step, correct)
            self.last_values["train_loss"], self.last_values["train_acc"] = loss, correct
        append_jsonl(self.run_dir / METRICS, {
            "type": "train", "step": self.step, "epoch": self.epoch, "train_loss": loss, "train_acc": correct,
            "lr": self.optimizer.param_groups[0]["lr"], "tau": self.optimizer.tau,
            "samples_per_s": self._throughput, "seconds": elapsed})
        finite = self._finite
        self._reset_window()
        self._finite = finite

    def _maybe_publish(self) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.config.snapshot_interval:
            self._flush_window()
            if self._check_finite():
                self._publish()
                return
            self._publish(with_layers=now - self._layers_at >= self._spectra_interval)

    def _publish(self, with_layers: bool = False) -> None:
        model = getattr(self, "model", None)
        if model is not None and with_layers:
            started = time.monotonic()
            self._layer_stats = layer_stats(model)
            self._layers_at = time.monotonic()
            # SVDs of large dense weights are not free: space them so they take ≤ 1 % of the time.
            self._spectra_interval = max(SPECTRA_INTERVAL_S, 100 * (self._layers_at - started))
        report = getattr(self, "_report", None)
        stats = getattr(self, "_layer_stats", ())
        throughput = getattr(self, "_throughput", 0.0)
        remaining = max(getattr(self, "total_steps", 0) - self.step, 0)
        batch = self.config.batch_size
        eta = remaining * batch / throughput if throughput > 0 else None
        optimizer = getattr(self, "optimizer", None)
        self._version += 1
        self._latest = replace(
            self._latest, state=self.state, message=self.message,
            device=getattr(self, "device_name", ""), step=self.step, epoch=self.epoch,
            total_steps=getattr(self, "total_steps", 0), samples_per_s=throughput,
            eta_s=eta if self.state in ("running", "paused") else None,
            tau=optimizer.tau if optimizer else self.config.tau, theta=self.theta,
            lr=optimizer.param_groups[0]["lr"] if optimizer else self.config.lr,
            curves={name: series.points() for name, series in self.curves.items()},
            layers=stats, params=report.params if report else 0,
            dense_params=report.dense_params if report else 0,
            compression=report.compression if report else 0.0,
            rank_fraction=report.rank_fraction if report else 1.0,
            lipschitz_bound=lipschitz_upper_bound(stats) if stats else 0.0,
            adversarial=self.attack_history[-1] if self.attack_history else None,
            adversarial_history=tuple(self.attack_history), events=tuple(self._events),
            version=self._version, **{k: v for k, v in self.last_values.items()})
