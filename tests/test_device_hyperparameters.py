"""A capturable CondLR reads η, μ, the weight decay and τ from device tensors, so a step captured
once as a CUDA graph follows later changes of them without a new capture."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_task
from test_device_step import DEVICE_PATH, OperatorLog, assert_orthonormal_and_conditioned, mlp

from rlr_engine import CondLR, low_rank_layers
from rlr_engine.method import device_hyperparameters
from rlr_engine.method.manifold import conditioning_bounds
from rlr_engine.run.step_graph import capture_key


def train(models_and_opts, x, y, steps, first=0):
    for step in range(first, first + steps):
        i = (step * 64) % len(x)
        for model, opt in models_and_opts:
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()


def pair(tau=0.1, weight_decay=1e-3):
    """The same float64 MLP and hyperparameters twice: stepped with Python numbers, and capturable."""
    models = [mlp(torch.float64), mlp(torch.float64)]
    opts = [
        CondLR(model, lr=0.1, momentum=0.5, tau=tau, weight_decay=weight_decay, capturable=capturable, **DEVICE_PATH)
        for model, capturable in zip(models, (False, True))
    ]
    return list(zip(models, opts))


def assert_same(runs, atol=1e-10):
    (a, _), (b, _) = runs
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=atol, rtol=0, msg=name)


def test_a_capturable_step_equals_the_step_with_python_numbers_through_every_kind_of_change():
    x, y = synthetic_task()
    x = x.double()
    runs = pair()
    changes = [
        lambda o: [g.update(lr=0.05) for g in o.param_groups],
        lambda o: o.set_tau(0.3),
        lambda o: [g.update(momentum=0.8) for g in o.param_groups],
        lambda o: o.set_tau(0.05),  # tighter: projects at once
        lambda o: [g.update(weight_decay=0.0) for g in o.param_groups],
        lambda o: o.param_groups[0].update(lr=0.02),  # U and V apart from S and the rest
        lambda o: o.set_tau(math.inf),
        # at τ = ∞: a finite τ clamps singular values onto its bounds, where equal ones leave the
        # truncated basis arbitrary (the two runs would keep different ones)
        lambda o: o.truncate(rank=6, layers=["0"]),
        lambda o: o.set_tau(0.0),
    ]
    train(runs, x, y, 6)
    for k, change in enumerate(changes):
        for _, opt in runs:
            change(opt)
        train(runs, x, y, 6, first=6 * (k + 1))
        assert_same(runs)
    assert runs[1][1].ranks() == {"0": 6, "2": 12}
    runs[1][1].set_tau(0.1)
    assert_orthonormal_and_conditioned(runs[1][0], 0.1, tolerance=1e-12)


def test_a_capturable_step_reads_every_hyperparameter_from_its_device_tensors():
    """What a replayed graph does: the groups still hold the old values, only the device tensors
    hold new ones — and the step follows the tensors, so no Python number reaches a kernel."""
    x, y = synthetic_task()
    x = x.double()
    runs = pair()
    train(runs, x, y, 3)
    python, capturable = runs[0][1], runs[1][1]
    python.set_tau(0.3)  # looser: nothing projected before the next step
    for group in python.param_groups:
        group.update(lr=0.03, momentum=0.7, weight_decay=0.01)
    tensors = capturable.refresh_hyperparameters()
    tensors.values[:, device_hyperparameters.NEGATIVE_LR] = -0.03
    tensors.values[:, device_hyperparameters.MOMENTUM] = 0.7
    tensors.values[:, device_hyperparameters.WEIGHT_DECAY] = 0.01
    delta = conditioning_bounds(0.3)
    tensors.bounds.copy_(torch.tensor([1 - delta, 1 + delta], dtype=tensors.bounds.dtype))
    assert capturable.param_groups[0]["lr"] == 0.1 and capturable.tau == 0.1
    train(runs, x, y, 3, first=3)
    assert_same(runs)
    for _, layer in low_rank_layers(runs[1][0]):
        sigma = torch.linalg.svdvals(layer.S.detach())
        assert sigma[0] / sigma[-1] > 1.1 + 1e-3  # conditioned to τ = 0.3, as the tensors say, not 0.1


def test_refreshing_unchanged_hyperparameters_launches_nothing_and_a_change_during_a_capture_is_refused(monkeypatch):
    _, (_, opt) = pair()
    assert opt.capturable
    opt.refresh_hyperparameters()
    log = OperatorLog()
    with log:
        opt.refresh_hyperparameters()
    assert log.names == set()  # a step's own refresh costs the device nothing
    monkeypatch.setattr(device_hyperparameters, "capturing", lambda: True)
    opt.refresh_hyperparameters()  # nothing changed: nothing to record
    opt.param_groups[1]["lr"] = 0.5
    with pytest.raises(RuntimeError, match="while a CUDA graph was being recorded"):
        opt.refresh_hyperparameters()
    opt.param_groups[1]["lr"] = 0.1
    opt.set_tau(0.2)  # looser: nothing projected, but the bounds would change
    with pytest.raises(RuntimeError, match="while a CUDA graph was being recorded"):
        opt.refresh_hyperparameters()


def test_the_capture_structure_of_a_capturable_step_ignores_values_and_holds_what_picks_its_kernels():
    (_, python), (model, opt) = pair()
    key = lambda: capture_key(model, opt, (64, 20))  # noqa: E731
    first = key()
    for group in opt.param_groups:
        group["lr"] = 0.01
        group["momentum"] = 0.9
        group["weight_decay"] = 0.5
    opt.set_tau(0.4)
    assert key() == first  # values the step reads from its tensors
    for change in (
        lambda: opt.set_tau(0.0),
        lambda: opt.set_tau(math.inf),
        lambda: opt.param_groups[2].update(momentum=0.0),
        lambda: opt.param_groups[0].update(weight_decay=0.0),
        lambda: opt.param_groups[1].update(lr=0.2),  # S no longer shares the others' lr
    ):
        before = key()
        change()
        assert key() != before
    # with Python numbers, every value is part of what a capture depends on
    before = python.capture_structure()
    python.param_groups[0]["lr"] = 0.07
    assert python.capture_structure() != before


@pytest.mark.parametrize(
    "options", [{"retraction": "householder"}, {"core_projection": "svd"}, {"reference_compat": True}]
)
def test_capturable_is_refused_with_a_solver_that_waits_for_the_host(options):
    with pytest.raises(ValueError, match="capturable needs a step that never waits for the host"):
        CondLR(mlp(), lr=0.1, capturable=True, **options)


def test_a_capturable_step_on_a_device_runs_no_synchronising_operation():
    model = mlp().to("meta")
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=0.1, weight_decay=1e-4, capturable=True)
    x, y = torch.randn(8, 20, device="meta"), torch.zeros(8, dtype=torch.long, device="meta")
    log = OperatorLog()
    for tau in (0.1, 0.0, math.inf, 0.5):
        opt.set_tau(tau)
        for group in opt.param_groups:
            group["lr"] *= 0.5
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with log:
            opt.step()
    assert "linalg_cholesky_ex" in log.names and "addcmul" in log.names
    assert log.synchronising() == set()


def test_the_capture_key_changes_with_a_new_optimizer_of_the_same_state_and_with_a_layers_forward():
    """An undo or a resume builds a new optimizer over the same parameters; with μ = 0 and τ = ∞
    its state is as empty as the old one's, but a graph of the old one reads the old one's
    batches and hyperparameter tensors."""
    x, y = synthetic_task()
    x = x.double()
    model = mlp(torch.float64)
    make = lambda: CondLR(model, lr=0.1, momentum=0.0, tau=math.inf, capturable=True, **DEVICE_PATH)  # noqa: E731
    old = make()
    train([(model, old)], x, y, 2)
    key = capture_key(model, old, (64, 20))
    assert capture_key(model, old, (64, 20)) == key
    new = make()
    assert not old.state and not new.state
    assert capture_key(model, new, (64, 20)) != key
    train([(model, new)], x, y, 1, first=2)
    key = capture_key(model, new, (64, 20))
    assert key != capture_key(model, old, (64, 20))
    _, layer = next(iter(low_rank_layers(model)))
    layer.set_forward_mode("composed")
    assert capture_key(model, new, (64, 20)) != key
