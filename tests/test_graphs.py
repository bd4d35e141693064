"""cuda_graphs: the training step captured as one CUDA graph. What decides a capture runs
everywhere; the captured step runs on CUDA (skipped elsewhere, run by benchmarks/gpu_check.sh)
and, with a graph's replay semantics emulated (graph_emulator.py), on the CPU."""

import copy
import math
import re

import pytest
import torch
from graph_emulator import EmulatedGraph, emulate_cuda_graphs
from helpers import small_config

from rlr_engine import CondLR
from rlr_engine.core.errors import PresetError
from rlr_engine.method import condlr as condlr_module
from rlr_engine.method.device_hyperparameters import tau_regime
from rlr_engine.method.lowrank import low_rank_layers
from rlr_engine.run import trainer as trainer_module
from rlr_engine.run.step_graph import capture_key, graphs_wanted
from rlr_engine.run.trainer import Trainer, load_run_data

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


def trainer(device="cpu", **changes):
    config = small_config(**{"tau": 0.1, "lr": 0.05, "momentum": 0.5, **changes})
    return Trainer(config, load_run_data(config, torch.device(device)), torch.device(device))


def test_only_on_captures_and_only_on_cuda_auto_keeps_the_eager_step():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert graphs_wanted("on", cuda) and not graphs_wanted("auto", cuda)
    assert not graphs_wanted("auto", cpu) and not graphs_wanted("off", cuda) and not graphs_wanted("off", cpu)
    with pytest.raises(ValueError, match="cuda_graphs = 'on' needs a CUDA device"):
        graphs_wanted("on", cpu)
    with pytest.raises(ValueError, match="captures the step of one process, but the run trains in 2"):
        graphs_wanted("on", cuda, processes=2)
    assert not graphs_wanted("auto", cuda, processes=2)


@pytest.mark.parametrize(
    "changes, allowed",
    [
        ({"method": "robust-dlrt"}, "with method = 'robust-dlrt': must be 'auto' or 'off'"),
        ({"method": "condlr-adaptive", "reference_compat": True}, "with method = 'condlr-adaptive'"),
        ({"reference_compat": True}, "with reference_compat = true: must be 'auto' or 'off'"),
    ],
)
def test_graphs_on_is_refused_by_the_config_where_the_step_cannot_be_captured(changes, allowed):
    with pytest.raises(PresetError, match=f"cuda_graphs = 'on' is not allowed {re.escape(allowed)}"):
        small_config(cuda_graphs="on", **changes)
    small_config(cuda_graphs="auto", **changes)  # the eager step is fine


def test_a_cpu_run_trains_eagerly_and_refuses_graphs_on():
    assert trainer().step_graph is None
    with pytest.raises(ValueError, match="cuda_graphs"):
        trainer(cuda_graphs="on")


def test_tau_regimes_are_the_branches_of_the_step():
    assert [tau_regime(t) for t in (0.0, 0.1, 5.0, math.inf)] == ["zero", "finite", "finite", "inf"]


def test_the_capture_key_holds_through_steps_and_changes_with_structure_and_hyperparameters():
    t = trainer()
    key = lambda shape=(64, 1, 8, 8): capture_key(t.model, t.optimizer, shape)  # noqa: E731
    fresh = key()
    t.train_step()
    first = key()
    assert first != fresh  # the first step made the momentum buffers a graph steps in place
    t.train_step()
    assert key() == first  # a step changes values, not what a graph depends on
    t.optimizer.load_state_dict(copy.deepcopy(t.optimizer.state_dict()))  # a checkpoint's: new state tensors
    assert key() != first
    first = key()
    assert key((17, 1, 8, 8)) != first  # the short last batch
    t.set_lr(0.01)
    after_lr = key()
    assert after_lr != first
    t.set_tau(0.0)
    after_tau = key()
    assert after_tau != after_lr
    t.set_tau(math.inf)
    assert key() != after_tau
    t.set_tau(0.1)
    before = key()
    t.truncate(None, 1, None)  # new parameter objects of new shapes
    assert key() != before
    before = key()
    p = next(t.model.parameters())
    p.data = p.data.clone()  # the same parameter object on other memory
    assert key() != before


def captured_and_eager(device, **changes):
    """A trainer whose step is captured and one that steps eagerly, alike otherwise (one forward
    for both: low_rank_forward "auto" could time its way to different ones)."""
    graphed = trainer(device, cuda_graphs="on", low_rank_forward="factored", **changes)
    eager = trainer(device, cuda_graphs="off", low_rank_forward="factored", **changes)
    assert graphed.step_graph is not None and eager.step_graph is None
    return graphed, eager


def steps(trainers, count):
    for _ in range(count):
        for t in trainers:
            if t.epoch_complete:
                t.end_epoch()
            assert t.train_step()


def assert_same(graphed, eager, atol):
    for (name, a), b in zip(graphed.model.named_parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def condition_numbers(t):
    """κ(S) of each low-rank layer's live core."""
    kappas = []
    for _, layer in low_rank_layers(t.model):
        sigma = torch.linalg.svdvals(layer.live_factors()[1].detach().double())
        kappas.append((sigma[0] / sigma[-1]).item())
    return kappas


def train_through_changes(graphed, eager, atol):
    """Both trainers (built at τ = ∞) through a truncation, τ's regime (a new capture each), lr
    and τ changes (none), and an undo (a new optimizer), the captured one matching the eager one.
    The truncation comes first, at τ = ∞: a finite τ clamps singular values onto its bounds, and
    cutting among equal ones keeps an arbitrary basis, which two runs would pick differently."""
    both = (graphed, eager)
    steps(both, 6)
    assert graphed.step_graph.captures == 1  # after two eager steps
    assert_same(graphed, eager, atol)
    for t in both:
        t.truncate(None, 2, None)
    steps(both, 4)
    assert graphed.step_graph.captures == 2  # new parameters
    assert_same(graphed, eager, atol)
    undo = [t.steering_state() for t in both]
    for t in both:
        t.set_tau(0.3)
    steps(both, 4)  # steps 11 to 14: a capture at 13
    assert_same(graphed, eager, atol)
    captures = graphed.step_graph.captures
    for t in both:
        t.set_lr(0.02)
    steps(both, 2)
    spreads = condition_numbers(graphed)
    assert max(spreads) > 1.05 + 1e-3  # τ = 0.05 below has cores to clamp
    for t in both:
        t.set_tau(0.05)
    steps(both, 2)  # steps 15 to 18: full batches (1200 samples: the 19th batch of an epoch is the short one)
    assert graphed.step_graph.captures == captures  # read from device tensors: no new capture
    assert_same(graphed, eager, atol)
    assert max(condition_numbers(graphed)) <= 1.05 + 1e-5  # the replay clamped to the new τ
    for t in both:
        t.set_tau(0.0)
    steps(both, 4)
    assert graphed.step_graph.captures > captures  # another branch of the step
    assert_same(graphed, eager, atol)
    for t, state in zip(both, undo):
        t.restore_steering_state(state)  # the weights, ranks, state and hyperparameters of step 10
    steps(both, 4)
    assert_same(graphed, eager, atol)
    assert graphed.read_window()[0] == pytest.approx(eager.read_window()[0], abs=1e-4)


class CapturableCondLR(CondLR):
    """CondLR reading its hyperparameters from tensors whether its step is captured or not, so
    that a captured and an eager run make the same operations (and part by nothing but a fault)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "capturable": True})


@pytest.fixture
def emulated(monkeypatch):
    """Captured steps on the CPU (graph_emulator), on the device path an accelerator takes, with
    the same optimizer step eager and captured."""
    emulate_cuda_graphs(monkeypatch)
    monkeypatch.setattr(trainer_module, "graphs_wanted", lambda setting, device, processes=1: setting == "on")
    monkeypatch.setattr(condlr_module, "runs_on_host", lambda device: False)
    monkeypatch.setattr(trainer_module, "CondLR", CapturableCondLR)


@CUDA
def test_the_captured_step_trains_as_the_eager_step_through_lr_and_tau_changes_a_truncation_and_an_undo():
    graphed, eager = captured_and_eager("cuda", tau=math.inf)
    assert graphed.execution == ["CUDA graph"] and eager.execution == []  # the header's "· CUDA graph"
    train_through_changes(graphed, eager, atol=1e-5)


def test_an_emulated_captured_step_trains_as_the_eager_step_through_every_change(emulated):
    graphed, eager = captured_and_eager("cpu", tau=math.inf)
    train_through_changes(graphed, eager, atol=0.0)
    assert graphed.step_graph._graph.replays > 0


@pytest.mark.parametrize("momentum, tau", [(0.0, math.inf), (0.5, 0.1)])
def test_an_emulated_captured_step_follows_an_undo_to_a_new_optimizer_and_a_command_after_it(emulated, momentum, tau):
    """With μ = 0 and τ = ∞ the new optimizer's state is as empty as the old one's: only its own
    tensors tell the two apart, and a graph of the old one would step with the old learning rate."""
    graphed, eager = captured_and_eager("cpu", momentum=momentum, tau=tau)
    both = (graphed, eager)
    steps(both, 4)
    undo = [t.steering_state() for t in both]
    for t in both:
        t.set_lr(0.5)
    steps(both, 3)
    for t, state in zip(both, undo):
        t.restore_steering_state(state)
        t.set_lr(0.01)  # what a user does after rolling back a bad learning rate
    steps(both, 4)
    assert_same(graphed, eager, atol=0.0)


def test_an_emulated_captured_bf16_step_trains_as_the_eager_one(emulated):
    graphed, eager = captured_and_eager("cpu", precision="bf16")
    steps((graphed, eager), 5)
    assert graphed.step_graph.captures == 1 and graphed.step_graph._graph.replays >= 2
    assert_same(graphed, eager, atol=0.0)


def test_the_emulator_replays_numbers_as_captured_and_tensors_as_they_are_now():
    scale, x = torch.tensor(2.0), torch.ones(3)
    graph = EmulatedGraph()
    with graph.capture():
        y = x * scale + 1.0
    x.fill_(3.0)
    scale.fill_(5.0)
    graph.replay()
    assert y.tolist() == [16.0, 16.0, 16.0]
    with pytest.raises(RuntimeError, match="hands a value to the host"), EmulatedGraph().capture():
        x.sum().item()


def test_recorded_condition_ratios_are_updated_in_place_so_a_captured_step_reads_the_new_ones():
    """A graph reads the memory it was captured with: the (σ_min/σ_max)² the next step scales by
    must be written into the same tensors every step, not into new ones."""
    t = trainer()
    state = t.optimizer.state
    cores = [layer.S for _, layer in t.optimizer.layers]
    t.train_step()
    recorded = [state[S]["inv_kappa_sq"] for S in cores]
    values = [float(r) for r in recorded]
    for _ in range(3):
        t.train_step()
    assert all(state[S]["inv_kappa_sq"] is r for S, r in zip(cores, recorded))
    assert [float(r) for r in recorded] != values
