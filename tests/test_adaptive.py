import io
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import small_config, synthetic_task
from torch import nn

from rlr_engine import low_rank_layers, to_low_rank
from rlr_engine.core.config import AttackSpec
from rlr_engine.method.adaptive import RankAdaptation, core_optimizer, soft_conditioning_penalty
from rlr_engine.run.trainer import Trainer, load_run_data

MIN_RANK = 2


def mlp(rank_fraction=0.25, max_rank_fraction=0.75):
    model = nn.Sequential(nn.Linear(20, 32), nn.LeakyReLU(), nn.Linear(32, 32), nn.LeakyReLU(), nn.Linear(32, 4))
    return to_low_rank(model, rank_fraction, max_rank_fraction=max_rank_fraction)


def cnn():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.LeakyReLU(),
        nn.Conv2d(8, 12, 3, stride=2),
        nn.LeakyReLU(),
        nn.Flatten(),
        nn.Linear(12 * 3 * 3, 4),
    )
    return to_low_rank(model, 0.25, max_rank_fraction=1.0)


def setup(method="robust-dlrt", kind="sgd", model=None, **kwargs):
    model = model if model is not None else mlp()
    lr = 0.01 if kind == "adamw" else 0.1
    optimizer = core_optimizer(model, kind, lr=lr, momentum=0.5)
    defaults = dict(adapt_every=5, theta=0.1, beta=0.01, tau=0.1, min_rank=MIN_RANK)
    defaults.update(kwargs)
    return model, optimizer, RankAdaptation(model, optimizer, method, **defaults)


def batch_step(model, optimizer, adaptation, x, y):
    loss = F.cross_entropy(model(x), y)
    total = loss + adaptation.regularizer()
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    return loss.item(), adaptation.step()


def train(model, optimizer, adaptation, x, y, steps, batch=64, on_step=None):
    losses = []
    for step in range(steps):
        i = (step * batch) % len(x)
        loss, changes = batch_step(model, optimizer, adaptation, x[i : i + batch], y[i : i + batch])
        losses.append(loss)
        if on_step is not None:
            on_step(changes)
    return losses


def live(layer):
    return tuple(t.detach().clone() for t in layer.live_factors())


def kappa(layer):
    s = torch.linalg.svdvals(layer.live_factors()[1].detach())
    return (s[0] / s[-1]).item()


def assert_orthonormal(layer):
    U, _, V = live(layer)
    eye = torch.eye(layer.rank)
    assert (U.T @ U - eye).abs().max() <= 1e-5
    assert (V.T @ V - eye).abs().max() <= 1e-5


def capped_mlp():
    """Starting ranks above half the storage: augmentation is capped at R < 2r."""
    return mlp(rank_fraction=0.5, max_rank_fraction=0.75)


@pytest.mark.parametrize("make", [mlp, cnn, capped_mlp])
def test_augmentation_leaves_the_weight_unchanged_with_orthonormal_bases_at_doubled_rank(make):
    x, y = (torch.randn(64, 1, 8, 8), torch.randint(0, 4, (64,))) if make is cnn else synthetic_task()
    model, optimizer, adaptation = setup(model=make())
    layers = dict(low_rank_layers(model))
    before = {n: (layer.rank, layer.dense_weight().detach().clone()) for n, layer in layers.items()}
    assert adaptation.position == 0
    batch_step(model, optimizer, adaptation, x[:64], y[:64])  # the augment batch
    for name, layer in layers.items():
        rank, weight = before[name]
        assert layer.rank == min(2 * rank, layer.max_rank) > rank
        assert make is not capped_mlp or layer.rank < 2 * rank
        error = torch.linalg.norm(layer.dense_weight().detach() - weight) / torch.linalg.norm(weight)
        assert error <= 1e-5, name
        assert_orthonormal(layer)
        assert torch.count_nonzero(layer.S.detach()[layer.rank :]) == 0  # dead core stays zero


def test_bases_are_frozen_inside_a_window_and_move_only_at_its_ends():
    x, y = synthetic_task()
    model, optimizer, adaptation = setup(adapt_every=6)
    train(model, optimizer, adaptation, x, y, 1)  # augment
    layers = [layer for _, layer in low_rank_layers(model)]
    bases = [(layer.U.detach().clone(), layer.V.detach().clone()) for layer in layers]
    cores = [layer.S.detach().clone() for layer in layers]
    train(model, optimizer, adaptation, x, y, 4)  # middle batches
    for layer, (U, V), S in zip(layers, bases, cores):
        assert torch.equal(layer.U.detach(), U) and torch.equal(layer.V.detach(), V)
        assert not torch.equal(layer.S.detach(), S)
        assert layer.U.grad is None and layer.V.grad is None


@pytest.mark.parametrize(
    "method, criterion, theta",
    [
        ("robust-dlrt", None, 0.0),
        ("robust-dlrt", None, 0.6),
        ("robust-dlrt", "relative", 0.95),
        ("condlr-adaptive", None, 0.0),
        ("condlr-adaptive", None, 0.9),
        ("condlr-adaptive", "nearest", 0.0),
    ],
)
def test_ranks_never_leave_min_rank_to_max_rank(method, criterion, theta):
    x, y = synthetic_task()
    model, optimizer, adaptation = setup(method, theta=theta, adapt_every=3, criterion=criterion)
    layers = [layer for _, layer in low_rank_layers(model)]
    seen = set()

    def check(changes):
        for layer in layers:
            assert MIN_RANK <= layer.rank <= layer.max_rank
            seen.add(layer.rank)

    train(model, optimizer, adaptation, x, y, 30, on_step=check)
    # both bounds are reached: θ = 0 keeps everything (grows to R), a large θ cuts to r_min
    if criterion != "nearest":
        target = max(layer.max_rank for layer in layers) if theta == 0 else MIN_RANK
        assert target in seen


@pytest.mark.parametrize(
    "method, criterion", [("robust-dlrt", "frobenius"), ("robust-dlrt", "relative"), ("condlr-adaptive", "relative")]
)
def test_truncation_error_equals_the_discarded_singular_values(method, criterion):
    x, y = synthetic_task()
    # τ = ∞ for condlr-adaptive: the window's end is truncation alone, no projection after it
    model, optimizer, adaptation = setup(method, tau=math.inf, theta=0.3, criterion=criterion, adapt_every=50)
    train(model, optimizer, adaptation, x, y, 7)
    layers = dict(low_rank_layers(model))
    weights = {n: layer.dense_weight().detach().clone() for n, layer in layers.items()}
    sigmas = {n: torch.linalg.svdvals(layer.live_factors()[1].detach()) for n, layer in layers.items()}
    changes = adaptation.end_window()
    assert any(c.new_rank < c.old_rank for c in changes)
    for change in changes:
        layer = layers[change.layer]
        assert layer.rank == change.new_rank
        discarded = sigmas[change.layer][change.new_rank :].norm()
        error = torch.linalg.norm(weights[change.layer] - layer.dense_weight().detach())
        torch.testing.assert_close(error, discarded, rtol=1e-4, atol=1e-5)
        assert change.discarded_norm == pytest.approx(discarded.item(), rel=1e-4, abs=1e-6)
        assert_orthonormal(layer)
    assert adaptation.position == 0


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.5])
def test_condition_number_bounded_by_one_plus_tau_at_every_window_boundary(tau):
    x, y = synthetic_task()
    model, optimizer, adaptation = setup("condlr-adaptive", tau=tau, beta=0.0, adapt_every=4)
    layers = [layer for _, layer in low_rank_layers(model)]
    assert max(kappa(layer) for layer in layers) <= 1 + tau + 1e-4  # before the first window
    boundaries, inside = [], []

    def check(changes):
        worst = max(kappa(layer) for layer in layers)
        (boundaries if changes else inside).append(worst)

    train(model, optimizer, adaptation, x, y, 40, on_step=check)
    assert len(boundaries) == 10 and max(boundaries) <= 1 + tau + 1e-4
    assert max(inside) > 1 + tau + 1e-3  # the bound is imposed at boundaries, not by luck
    train(model, optimizer, adaptation, x, y, 2)  # mid-window
    adaptation.before_evaluation()
    assert max(kappa(layer) for layer in layers) <= 1 + tau + 1e-4
    for layer in layers:
        assert_orthonormal(layer)


def test_a_live_tau_change_is_imposed_before_the_next_evaluation():
    x, y = synthetic_task()
    model, optimizer, adaptation = setup("condlr-adaptive", tau=0.5, adapt_every=4)
    train(model, optimizer, adaptation, x, y, 8)
    assert adaptation.position == 0
    adaptation.tau = 0.05
    adaptation.before_evaluation()
    assert all(kappa(layer) <= 1.05 + 1e-4 for _, layer in low_rank_layers(model))


@pytest.mark.parametrize("method", ["robust-dlrt", "condlr-adaptive"])
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_state_dict_round_trip_mid_window_continues_bit_identically(method, kind):
    x, y = synthetic_task()
    model, optimizer, adaptation = setup(method, kind)
    train(model, optimizer, adaptation, x, y, 13)
    assert adaptation.position not in (0, 1)  # mid-window, after the augment batch
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "adaptation": adaptation.state_dict()},
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer)
    torch.manual_seed(123)
    clone_model, clone_optimizer, clone_adaptation = setup(method, kind, model=mlp(), theta=0.5, beta=0.0)
    clone_model.load_state_dict(saved["model"])
    clone_optimizer.load_state_dict(saved["optimizer"])
    clone_adaptation.load_state_dict(saved["adaptation"])
    assert clone_adaptation.ranks() == adaptation.ranks() and clone_adaptation.theta == 0.1
    changed = []
    train(model, optimizer, adaptation, x, y, 12, on_step=lambda c: changed.append(bool(c)))
    train(clone_model, clone_optimizer, clone_adaptation, x, y, 12)
    assert any(changed)  # the continuation crosses augment and truncation
    for (key, a), b in zip(model.state_dict().items(), clone_model.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_state_of_the_core_moves_with_the_bases(kind):
    """Linear moments are W-space quantities U m Vᵀ: augmentation keeps them exactly, truncation
    keeps their projection on the kept directions. Adam's second moment stays ≥ 0."""
    x, y = synthetic_task()
    # τ = ∞ so that before_evaluation() is a bare truncation
    model, optimizer, adaptation = setup("condlr-adaptive", kind, adapt_every=5, theta=0.3, tau=math.inf)
    key = "exp_avg" if kind == "adamw" else "momentum_buffer"
    layers = [layer for _, layer in low_rank_layers(model)]

    def w_space(layer):
        U, _, V = live(layer)
        r = layer.rank
        return U @ optimizer.state[layer.S][key][:r, :r] @ V.T

    train(model, optimizer, adaptation, x, y, 5)  # one full window: moments exist
    before = [w_space(layer) for layer in layers]
    train(model, optimizer, adaptation, x, y, 1)  # augment
    for layer, m in zip(layers, before):
        torch.testing.assert_close(w_space(layer), m, atol=1e-6, rtol=1e-5)
        assert torch.count_nonzero(optimizer.state[layer.S][key][layer.rank :]) == 0
    train(model, optimizer, adaptation, x, y, 2)
    before = [w_space(layer) for layer in layers]
    changes = adaptation.before_evaluation()
    assert any(c.new_rank < c.old_rank for c in changes)
    for layer, m in zip(layers, before):
        U, _, V = live(layer)
        torch.testing.assert_close(w_space(layer), U @ U.T @ m @ V @ V.T, atol=1e-6, rtol=1e-5)
        assert torch.count_nonzero(optimizer.state[layer.S][key][layer.rank :]) == 0
        if kind == "adamw":
            assert (optimizer.state[layer.S]["exp_avg_sq"] >= 0).all()


@pytest.mark.parametrize("method", ["robust-dlrt", "condlr-adaptive"])
def test_training_lowers_the_loss_and_moves_the_ranks(method):
    x, y = synthetic_task()
    model, optimizer, adaptation = setup(method, adapt_every=5, theta=0.05)
    start = adaptation.ranks()
    boundaries = []
    losses = train(
        model,
        optimizer,
        adaptation,
        x,
        y,
        150,
        on_step=lambda changes: boundaries.append(adaptation.ranks()) if changes else None,
    )
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert len(boundaries) == 30 and any(ranks != start for ranks in boundaries)


def test_regularizer_vanishes_exactly_on_scaled_orthogonal_cores():
    Q, _ = torch.linalg.qr(torch.randn(5, 5))
    assert soft_conditioning_penalty(3.0 * Q).item() == pytest.approx(0.0, abs=1e-5)
    S = torch.diag(torch.tensor([2.0, 1.0]))
    # S Sᵀ = diag(4, 1), ‖S‖²/r = 2.5: ‖diag(1.5, −1.5)‖ = 1.5·√2
    assert soft_conditioning_penalty(S).item() == pytest.approx(1.5 * math.sqrt(2))
    x, y = synthetic_task()
    model, optimizer, adaptation = setup(beta=0.5)
    assert adaptation.regularizer() == 0.0  # augment batch: no step follows it
    train(model, optimizer, adaptation, x, y, 1)
    value = adaptation.regularizer()
    expected = 0.5 * sum(soft_conditioning_penalty(layer.live_factors()[1]) for _, layer in low_rank_layers(model))
    torch.testing.assert_close(value, expected)
    adaptation.beta = 0.0
    assert adaptation.regularizer() == 0.0


def test_beta_flattens_the_spectrum_inside_a_window():
    x, y = synthetic_task()
    kappas = {}
    for beta in (0.0, 1.0):
        torch.manual_seed(0)
        model, optimizer, adaptation = setup(beta=beta, adapt_every=200)
        train(model, optimizer, adaptation, x, y, 60)
        kappas[beta] = max(kappa(layer) for _, layer in low_rank_layers(model))
    assert kappas[1.0] < 0.8 * kappas[0.0]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("theta", 1.5, "theta must be"),
        ("theta", "x", "theta must be"),
        ("beta", -1, "beta must be"),
        ("beta", math.inf, "beta must be"),
        ("adapt_every", 1, "adapt_every must be"),
        ("adapt_every", 2.5, "adapt_every must be"),
        ("tau", -0.1, "tau must be"),
    ],
)
def test_bad_live_hyperparameters_are_rejected_and_change_nothing(field, value, message):
    _, _, adaptation = setup("condlr-adaptive")
    before = adaptation.state_dict()
    with pytest.raises(ValueError, match=message):
        setattr(adaptation, field, value)
    assert adaptation.state_dict() == before


def test_tau_is_refused_for_robust_dlrt_and_bad_constructions_name_the_problem():
    _, _, adaptation = setup("robust-dlrt")
    with pytest.raises(ValueError, match="condlr-adaptive only"):
        adaptation.tau = 0.1
    model = mlp()
    with pytest.raises(ValueError, match="holds the bases"):
        RankAdaptation(model, torch.optim.SGD(model.parameters(), lr=0.1), "robust-dlrt")
    with pytest.raises(ValueError, match="method must be one of"):
        RankAdaptation(model, core_optimizer(model, "sgd", 0.1), "dlrt")
    with pytest.raises(ValueError, match=r"min_rank = 7 is not allowed: layer '0' holds rank 5; must be <= 5"):
        RankAdaptation(model, core_optimizer(model, "sgd", 0.1), "robust-dlrt", min_rank=7)
    with pytest.raises(ValueError, match="core optimizer must be"):
        core_optimizer(model, "lamb", 0.1)


def test_middle_steps_never_read_tensors_on_the_host(monkeypatch):
    x, y = synthetic_task()
    model, optimizer, adaptation = setup(adapt_every=10)
    train(model, optimizer, adaptation, x, y, 3)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside a window")

    loss = F.cross_entropy(model(x[:64]), y[:64]) + adaptation.regularizer()
    optimizer.zero_grad()
    loss.backward()
    for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    adaptation.step()


ADAPTIVE = dict(rank_fraction=0.25, max_rank_fraction=0.75, adapt_every=5, truncate_theta=0.2, lr=0.05, momentum=0.5)


def live_kappas(model_state):
    """κ of every live core of a saved model."""
    kappas = []
    for key, S in model_state.items():
        if key.endswith(".S"):
            r = int(model_state[key[:-1] + "live_rank"])
            sigma = torch.linalg.svdvals(S[:r, :r].double())
            kappas.append(float(sigma[0] / sigma[-1]))
    return kappas


def test_the_engine_trains_condlr_adaptive_with_one_event_per_window_and_kappa_bounded_when_saved(tmp_path):
    from helpers import run_to_end, start_engine

    from rlr_engine.control.run_dirs import read_jsonl
    from rlr_engine.run.checkpoint import load_checkpoint

    engine = start_engine(tmp_path, method="condlr-adaptive", tau=0.1, epochs=3, **ADAPTIVE)
    snap = run_to_end(engine, timeout=300)
    assert snap.state == "finished", snap.message
    windows = [e for e in read_jsonl(engine.run_dir / "events.jsonl") if e["message"].startswith("window ended")]
    assert windows, "ranks never moved"
    assert all("→" in e["message"] and "removed" in e["message"] for e in windows)
    steps = [e["step"] for e in windows]
    assert len(steps) == len(set(steps)), "one event per window, not one per layer"
    reported: dict[str, int] = {}
    for event in windows:  # only real moves, each starting where the layer's last one ended
        for layer, before, after in re.findall(r"(\w+) (\d+)→(\d+)", event["message"]):
            assert before != after, event["message"]
            assert reported.get(layer, int(before)) == int(before), (reported, event["message"])
            reported[layer] = int(after)
    assert all(k <= 1.1 + 1e-4 for k in live_kappas(load_checkpoint(engine.run_dir / "checkpoint.pt")["model"]))
    assert all(layer.kappa <= 1.1 + 1e-4 for layer in snap.layers if layer.low_rank and layer.rank > 1)
    assert snap.method.startswith("CondLR-adaptive") and snap.adapt_every == 5


def test_beta_and_the_window_are_steered_live_and_bad_values_are_rejected(tmp_path):
    from helpers import start_engine, wait_for

    from rlr_engine.control.records import SetAdaptation, SetTau

    engine = start_engine(tmp_path, method="robust-dlrt", beta=0.01, epochs=100, **ADAPTIVE)
    wait_for(engine, lambda s: s.state == "running" and s.step > 3)
    engine.send(SetAdaptation(beta=0.05, adapt_every=4), request_id="ok")
    snap = wait_for(engine, lambda s: s.beta == 0.05)
    assert snap.adapt_every == 4 and snap.method == "robust-dlrt β=0.05"
    engine.send(SetAdaptation(beta=-1.0), request_id="bad")
    engine.send(SetTau(0.5), request_id="tau")
    wait_for(engine, lambda s: len([a for a in engine.acks if a.request_id in ("bad", "tau")]) == 2)
    acks = {a.request_id: a for a in engine.acks}
    assert acks["ok"].status == "applied"
    assert acks["bad"].status == "rejected" and "beta" in acks["bad"].message
    assert acks["tau"].status == "rejected" and "condlr-adaptive only" in acks["tau"].message
    assert engine.latest().beta == 0.05 and engine.latest().adapt_every == 4
    engine.stop(30)
    summary = json.loads((engine.run_dir / "summary.json").read_text())
    assert summary["state"] == "stopped" and summary["method"] == "robust-dlrt β=0.05"  # as it ended


def test_a_rank_adaptive_run_stopped_mid_window_resumes_on_the_same_curve(tmp_path):
    from helpers import run_to_end, start_engine, wait_for

    from rlr_engine.control.records import Pause, Stop
    from rlr_engine.run.checkpoint import load_checkpoint

    settings = dict(method="robust-dlrt", beta=0.01, epochs=2, max_steps=40, **ADAPTIVE)
    reference = start_engine(tmp_path / "a", **settings)
    assert run_to_end(reference).state == "finished"
    interrupted = start_engine(tmp_path / "b", commands=[Pause(at_step=7)], **settings)  # mid-window
    wait_for(interrupted, lambda s: s.state == "paused")
    interrupted.send(Stop())
    stopped = run_to_end(interrupted)
    assert stopped.state == "stopped" and stopped.step == 7
    assert (stopped.state == "stopped" and stopped.step % 5 != 0) or stopped.step < 40
    resumed = start_engine(tmp_path / "b", resume_dir=interrupted.run_dir, **settings)
    assert run_to_end(resumed).state == "finished"
    a = load_checkpoint(reference.run_dir / "checkpoint.pt")
    b = load_checkpoint(interrupted.run_dir / "checkpoint.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["adaptation"] == b["adaptation"]


def adaptive_trainers(count, **changes):
    """``count`` identical condlr-adaptive Trainers on the synthetic data set."""
    config = small_config(
        method="condlr-adaptive",
        tau=0.1,
        rank_fraction=0.3,
        max_rank_fraction=0.6,
        adapt_every=4,
        truncate_theta=0.05,
        momentum=0.3,
        lr=0.1,
        min_rank=1,
        **changes,
    )
    data = load_run_data(config, torch.device("cpu"))
    return [Trainer(config, data, torch.device("cpu")) for _ in range(count)]


def train_steps(trainer, steps):
    for _ in range(steps):
        trainer.train_step()
        if trainer.epoch_complete:
            trainer.end_epoch()


def test_a_checkpoint_loads_with_the_weights_it_saved_under_a_tau_set_live():
    # τ loosened live to ∞: the saved cores may exceed the preset's 1 + τ and must not be
    # projected with it when the checkpoint is loaded
    saved, restored = adaptive_trainers(2)
    train_steps(saved, 6)
    saved.set_tau(math.inf)
    train_steps(saved, 41)
    saved.condition_for_measuring()
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True), "checkpoint")
    assert math.isinf(restored.tau)
    kappas = [torch.linalg.cond(layer.live_factors()[1].detach()).item() for _, layer in saved.adaptation.layers]
    assert max(kappas) > 1.1 * (1 + 1e-3)  # the test is about cores the preset's τ would change
    for name, value in saved.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[name], value), name


def test_an_attack_between_windows_does_not_steer_the_next_augmentation():
    # advertorch's backward passes fill U.grad and V.grad, which the optimizer of a
    # rank-adaptive run does not hold; the augmentation must read this batch's gradients only
    attacked, untouched = adaptive_trainers(2, attack="pgd-linf")
    for trainer in (attacked, untouched):
        train_steps(trainer, 6)
        trainer.condition_for_measuring()  # ends the window: the next batch augments
    attacked.attack(AttackSpec("pgd-linf", (0.0, 0.1), steps=5), final=False, seed=0)
    assert any(layer.U.grad is not None for _, layer in attacked.adaptation.layers)
    for trainer in (attacked, untouched):
        train_steps(trainer, 2)
    assert attacked.adaptation.ranks() == untouched.adaptation.ranks()
    for name, value in untouched.model.state_dict().items():
        assert torch.equal(attacked.model.state_dict()[name], value), name


def test_a_truncation_mid_window_reports_ranks_against_those_shown_not_the_augmented_ones(tmp_path):
    from helpers import start_engine, wait_for

    from rlr_engine.control.records import Pause, Truncate

    engine = start_engine(
        tmp_path,
        commands=[Pause(at_step=35)],  # inside a window; the epoch end at step 38 would end it
        method="condlr-adaptive",
        rank_fraction=0.3,
        max_rank_fraction=0.6,
        adapt_every=10,
        epochs=50,
    )
    wait_for(engine, lambda s: s.state == "paused")
    assert engine.trainer.step == 35
    assert engine.trainer.adaptation.position != 0  # mid-window: the bases are augmented
    shown = {layer.name: layer.rank for layer in engine.latest().layers}
    engine.send(Truncate(theta=0.5))
    snap = wait_for(engine, lambda s: any("truncation (θ = 0.5)" in e.message for e in s.events))
    moves = [re.match(r"(\w+): rank (\d+) → (\d+)", e.message) for e in snap.events if e.kind == "truncation"]
    moves = [m for m in moves if m]
    assert moves
    for move in moves:
        assert int(move[2]) == shown[move[1]] and int(move[3]) != int(move[2])
    assert {layer.name: layer.rank for layer in snap.layers} == {**shown, **{m[1]: int(m[3]) for m in moves}}


def test_a_resume_that_sets_tau_on_a_robust_dlrt_run_ignores_it_as_a_new_run_does(tmp_path):
    from dataclasses import replace

    from helpers import run_to_end, start_engine

    from rlr_engine.control.run_dirs import read_run_config
    from rlr_engine.run.engine import Engine

    engine = start_engine(tmp_path, method="robust-dlrt", rank_fraction=0.3, max_rank_fraction=0.6, epochs=1)
    run_to_end(engine)
    config = replace(read_run_config(engine.run_dir), epochs=2, tau=0.3)
    resumed = Engine(config, engine.run_dir, resume=True, resume_settings={"tau", "lr"}).setup()
    assert math.isinf(resumed.trainer.tau) and resumed.trainer.lr == config.lr
