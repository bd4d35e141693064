"""Low-rank layers computed factored or composed, and the choice between them by timing."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from graph_emulator import emulate_cuda_graphs
from helpers import small_config, start_engine, stop_started_engines, wait_for

from rlr_engine import CondLR, low_rank_layers, to_low_rank
from rlr_engine.core.catalog import LOW_RANK_FORWARDS
from rlr_engine.core.config import validate
from rlr_engine.core.errors import PresetError
from rlr_engine.method.forward_choice import (
    ForwardTuner,
    graphed_median_seconds,
    layer_inputs,
    median_seconds,
    tunes_forwards,
)
from rlr_engine.method.lowrank import LowRankConv2d, LowRankLinear
from rlr_engine.run import trainer as trainer_module
from rlr_engine.run.trainer import Trainer, load_run_data
from rlr_engine.workload.models import build_model, use_channels_last


@pytest.fixture(autouse=True)
def _stop_engines():
    yield
    stop_started_engines()


def outputs_and_gradients(layer, x):
    x = x.clone().requires_grad_(True)
    out = layer(x)
    wrt = [layer.U, layer.S, layer.V, layer.bias, x]
    return [out, *torch.autograd.grad(out, wrt, torch.randn_like(out, generator=torch.Generator().manual_seed(1)))]


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: LowRankLinear(30, 20, rank=7, max_rank=9, dtype=torch.float64), (5, 30)),
        (lambda: LowRankConv2d(3, 8, 3, rank=4, padding=1, dtype=torch.float64), (2, 3, 9, 9)),
        (
            lambda: LowRankConv2d(4, 6, (3, 2), rank=3, stride=2, dilation=2, max_rank=5, dtype=torch.float64),
            (2, 4, 11, 10),
        ),
    ],
    ids=["linear-spare-storage", "conv-padded", "conv-strided-dilated"],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_composed_forward_computes_the_factored_one_and_its_gradients(make, shape, channels_last):
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():  # a full core, not the diagonal one of the SVD
        layer.S[: layer.rank, : layer.rank] += 0.1 * torch.randn(layer.rank, layer.rank, dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last and x.dim() == 4:
        layer.memory_format = torch.channels_last
        x = x.contiguous(memory_format=torch.channels_last)
    factored = outputs_and_gradients(layer, x)
    layer.set_forward_mode("composed")
    composed = outputs_and_gradients(layer, x)
    for a, b, name in zip(factored, composed, ["output", "U", "S", "V", "bias", "input"]):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=0, msg=name)
    if channels_last and x.dim() == 4:
        assert composed[0].is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="forward_mode must be one of"):
        layer.set_forward_mode("fast")


def lenet():
    torch.manual_seed(0)
    model = to_low_rank(build_model("lenet5", 1, 10, 28), rank_fraction=0.2)
    return model, torch.rand(16, 1, 28, 28)


class Clock:
    """A measure that runs what it is given once and returns the next of ``seconds``."""

    def __init__(self, seconds):
        self.seconds = iter(seconds)
        self.calls = 0

    def __call__(self, work):
        work()
        self.calls += 1
        return next(self.seconds)


def test_the_tuner_gives_each_layer_its_faster_forward_and_times_a_case_once():
    model, x = lenet()
    names = [name for name, _ in low_rank_layers(model)]
    # (factored, composed) per layer, in layer order
    clock = Clock([1.0, 2.0, 3.0, 1.0, 0.5, 0.5])
    tuner = ForwardTuner(clock)
    timed = tuner.tune(model, x)
    assert [c.layer for c in timed] == names and len(names) == 3
    assert [c.mode for c in timed] == ["factored", "composed", "factored"]  # a tie stays factored
    assert [layer.forward_mode for _, layer in low_rank_layers(model)] == [c.mode for c in timed]
    assert (timed[1].factored, timed[1].composed) == (3.0, 1.0)
    assert "composed (1e+03 ms against 3e+03 factored)" in timed[1].describe()
    assert tuner.tune(model, x) == [] and clock.calls == 6  # the same ranks and inputs: nothing timed
    opt = CondLR(model, lr=0.1, tau=0.1)
    opt.truncate(rank=3, layers=[names[2]])
    clock.seconds = iter([5.0, 4.0])
    again = tuner.tune(model, x)
    assert [(c.layer, c.rank, c.mode) for c in again] == [(names[2], 3, "composed")] and clock.calls == 8


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_first_layers_input_is_timed_without_a_gradient_and_every_later_ones_with_one(channels_last):
    torch.manual_seed(0)
    model = to_low_rank(build_model("lenet5", 1, 10, 28, mean=(0.5,), std=(0.25,)), rank_fraction=0.2)
    if channels_last:
        use_channels_last(model)
    inputs = layer_inputs(model, torch.rand(4, 1, 28, 28))
    assert [t.requires_grad for t in inputs.values()] == [False, True, True]
    seen = []
    ForwardTuner(lambda work: seen.append(len(work())) or 1.0).tune(model, torch.rand(4, 1, 28, 28))
    assert seen == [4, 4, 5, 5, 5, 5]  # gradients of U, S, V, bias (and of the input after the first layer)


def test_a_captured_steps_forwards_are_timed_as_captured_replays(monkeypatch):
    emulate_cuda_graphs(monkeypatch)  # graph_emulator: a capture that hands a value to the host fails
    model, x = lenet()
    replays = []
    measure = lambda work: graphed_median_seconds(lambda: replays.append(1) or work(), min_run_time=0.001)  # noqa: E731
    timed = ForwardTuner(measure).tune(model, x)
    assert len(timed) == 3 and all(c.factored > 0 and c.composed > 0 for c in timed)
    assert len(replays) == 6 * 3  # per layer and forward: two eager calls and the capture, nothing after
    assert all(p.grad is None for p in model.parameters())


def test_tuning_moves_no_gradient_no_statistic_and_no_random_state_and_keeps_the_mode():
    torch.manual_seed(0)
    model = to_low_rank(build_model("vgg16", 3, 10, 32), rank_fraction=0.1)  # batch norm and dropout
    use_channels_last(model)
    model.train()
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    inputs = layer_inputs(model, x)
    assert list(inputs) == [name for name, _ in low_rank_layers(model)]
    ForwardTuner(Clock(itertools.cycle([1.0, 2.0]))).tune(model, x)
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_real_measure_times_both_forwards_of_every_layer():
    model, x = lenet()
    timed = ForwardTuner(lambda work: median_seconds(work, min_run_time=0.001)).tune(model, x)
    assert len(timed) == 3 and all(c.factored > 0 and c.composed > 0 and c.mode in LOW_RANK_FORWARDS for c in timed)


def test_a_model_of_mixed_forwards_trains_as_the_factored_model():
    model, x = lenet()
    reference, _ = lenet()
    timed = ForwardTuner(Clock([2.0, 1.0, 1.0, 2.0, 2.0, 1.0])).tune(model, x)
    assert [c.mode for c in timed] == ["composed", "factored", "composed"]
    y = torch.arange(16) % 10
    opts = [CondLR(m, lr=0.05, momentum=0.5, tau=0.1) for m in (model, reference)]
    for _ in range(5):
        for m, opt in zip((model, reference), opts):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_auto_is_timed_on_accelerators_only_and_a_named_forward_is_every_layers():
    assert tunes_forwards("auto", torch.device("cuda")) and tunes_forwards("auto", torch.device("mps"))
    assert not tunes_forwards("auto", torch.device("cpu"))
    assert not tunes_forwards("auto", torch.device("cuda"), compiled=True)
    assert not tunes_forwards("composed", torch.device("cuda"))
    config = small_config(low_rank_forward="composed")
    t = Trainer(config, load_run_data(config, torch.device("cpu")), torch.device("cpu"))
    assert {layer.forward_mode for _, layer in low_rank_layers(t.model)} == {"composed"}
    assert t.train_step() and t.take_forward_notes() == []
    with pytest.raises(PresetError, match="low_rank_forward = 'fast' is not allowed: must be one of auto"):
        validate({"name": "x", "low_rank_forward": "fast"})


def tuned_on_this_machine(monkeypatch, seconds):
    """Make "auto" time the forwards on the CPU, with a Clock of ``seconds``."""
    clock = Clock(seconds)
    monkeypatch.setattr(trainer_module, "tunes_forwards", lambda setting, device, compiled=False: setting == "auto")
    monkeypatch.setattr(trainer_module, "ForwardTuner", lambda measure: ForwardTuner(clock))
    return clock


def test_a_trainer_times_the_forwards_at_its_first_step_and_again_when_a_truncation_changes_a_rank(monkeypatch):
    clock = tuned_on_this_machine(monkeypatch, itertools.cycle([1.0, 2.0, 2.0, 1.0]))
    config = small_config()
    t = Trainer(config, load_run_data(config, torch.device("cpu")), torch.device("cpu"))
    names = [name for name, _ in low_rank_layers(t.model)]
    assert len(names) == 3 and t.take_forward_notes() == []
    assert t.train_step()
    (note,) = t.take_forward_notes()
    assert note == (
        f"low-rank forward per layer, timed on cpu: {names[0]} factored (1e+03 ms against 2e+03 composed), "
        f"{names[1]} composed (1e+03 ms against 2e+03 factored), {names[2]} factored (1e+03 ms against 2e+03 composed)"
    )
    assert [layer.forward_mode for _, layer in low_rank_layers(t.model)] == ["factored", "composed", "factored"]
    assert t.train_step() and t.take_forward_notes() == [] and clock.calls == 6
    t.truncate(None, 1, names[1])
    assert t.train_step()
    (note,) = t.take_forward_notes()
    assert note.startswith(f"low-rank forward per layer, timed on cpu: {names[1]} ") and clock.calls == 8
    assert names[0] not in note and names[2] not in note


def test_a_rank_adaptive_run_does_not_time_again_when_its_windows_move_the_live_ranks(monkeypatch):
    clock = tuned_on_this_machine(monkeypatch, itertools.cycle([1.0, 2.0]))
    config = small_config(method="robust-dlrt", truncate_theta=0.4)
    t = Trainer(config, load_run_data(config, torch.device("cpu")), torch.device("cpu"))
    before = [layer.rank for _, layer in low_rank_layers(t.model)]
    for _ in range(3 * config.adapt_every):
        if t.epoch_complete:
            t.end_epoch()
        assert t.train_step()
    assert [layer.rank for _, layer in low_rank_layers(t.model)] != before  # the windows moved them
    assert clock.calls == 2 * len(before) and len(t.take_forward_notes()) == 1  # timed at the start only


def test_a_run_records_the_timed_choices_in_its_events(tmp_path, monkeypatch):
    tuned_on_this_machine(monkeypatch, itertools.cycle([1.0, 2.0]))
    engine = start_engine(tmp_path, epochs=1)
    snap = wait_for(engine, lambda s: any("low-rank forward per layer" in e.message for e in s.events))
    (event,) = [e for e in snap.events if "low-rank forward per layer" in e.message]
    assert event.kind == "info" and event.message.count("factored (1e+03 ms against 2e+03 composed)") == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_on_cuda_auto_times_every_layer_and_the_run_trains_as_the_factored_one(monkeypatch):
    # float32 products and convolutions: with TF32 (cuDNN's default) the two forwards would
    # differ by TF32's rounding, 1e-3 relative, which is not what this compares
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    config = small_config(low_rank_forward="auto")
    tuned = Trainer(config, load_run_data(config, torch.device("cuda")), torch.device("cuda"))
    config = small_config(low_rank_forward="factored")
    factored = Trainer(config, load_run_data(config, torch.device("cuda")), torch.device("cuda"))
    for _ in range(5):
        assert tuned.train_step() and factored.train_step()
    (note,) = tuned.take_forward_notes()
    assert note.startswith("low-rank forward per layer, timed on cuda")
    assert all(name in note for name, _ in low_rank_layers(tuned.model))
    for (name, a), b in zip(tuned.model.named_parameters(), factored.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=name)
