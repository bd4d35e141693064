"""cuda_graphs: the training step captured as one CUDA graph. What decides a capture runs
everywhere; the captured step itself needs CUDA (skipped elsewhere, run by benchmarks/gpu_check.sh)."""

import copy
import math

import pytest
import torch
from helpers import small_config

from rlr_engine.method.device_hyperparameters import tau_regime
from rlr_engine.run.step_graph import capture_key, graphs_wanted
from rlr_engine.run.trainer import Trainer, load_run_data

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


def trainer(device="cpu", **changes):
    config = small_config(tau=0.1, lr=0.05, momentum=0.5, **changes)
    return Trainer(config, load_run_data(config, torch.device(device)), torch.device(device))


def test_only_on_captures_and_only_on_cuda_auto_keeps_the_eager_step():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert graphs_wanted("on", cuda) and not graphs_wanted("auto", cuda)
    assert not graphs_wanted("auto", cpu) and not graphs_wanted("off", cuda) and not graphs_wanted("off", cpu)
    with pytest.raises(ValueError, match="cuda_graphs = 'on' needs a CUDA device"):
        graphs_wanted("on", cpu)
    with pytest.raises(ValueError, match="cannot capture the step of reference_compat = true"):
        graphs_wanted("on", cuda, reference_compat=True)
    assert not graphs_wanted("auto", cuda, reference_compat=True)


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


@CUDA
def test_the_captured_step_trains_as_the_eager_step_through_lr_and_tau_changes_and_a_truncation():
    # one forward for both (low_rank_forward "auto" could time its way to different ones)
    graphed = trainer("cuda", cuda_graphs="on", low_rank_forward="factored")
    eager = trainer("cuda", cuda_graphs="off", low_rank_forward="factored")
    assert graphed.step_graph is not None and eager.step_graph is None
    assert graphed.execution == ["CUDA graph"] and eager.execution == []  # the header's "· CUDA graph"

    def steps(count):
        for _ in range(count):
            for t in (graphed, eager):
                if t.epoch_complete:
                    t.end_epoch()
                assert t.train_step()

    def same():
        for (name, a), b in zip(graphed.model.named_parameters(), eager.model.parameters()):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)

    steps(6)
    captures = graphed.step_graph.captures
    assert captures >= 1  # one, and one more if an epoch ended on a short batch
    same()
    # steps 7 to 14 take full batches (1200 samples: the 19th batch of an epoch is the short one)
    captures = graphed.step_graph.captures
    for t in (graphed, eager):
        t.set_lr(0.02)
    steps(4)
    same()
    for t in (graphed, eager):
        t.set_tau(0.3)
    steps(4)
    same()
    assert graphed.step_graph.captures == captures  # read from device tensors: no new capture
    for t in (graphed, eager):
        t.set_tau(0.0)
    steps(4)
    assert graphed.step_graph.captures > captures  # another branch of the step
    same()
    for t in (graphed, eager):
        t.truncate(None, 2, None)
    steps(4)
    same()
    assert graphed.read_window()[0] == pytest.approx(eager.read_window()[0], abs=1e-4)


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
