"""precision = "bf16": the forward and backward run in bfloat16 under autocast, while the factors,
their momentum, the retraction and the core projection stay float32 — so the method's guarantees
(orthonormal U and V, κ(S) ≤ 1 + τ) hold as in float32, and training still learns."""

import pytest
import torch
from helpers import small_config, start_engine, stop_started_engines, wait_for

from rlr_engine import low_rank_layers
from rlr_engine.core.config import RunConfig
from rlr_engine.core.errors import PresetError
from rlr_engine.run.trainer import Trainer, describe_device, load_run_data


def bf16_trainer(**changes):
    config = small_config(precision="bf16", tau=0.1, lr=0.05, momentum=0.5, **changes)
    return Trainer(config, load_run_data(config, torch.device("cpu")), torch.device("cpu"))


def test_a_bf16_step_runs_the_forward_in_bfloat16_and_keeps_the_factors_orthonormal_and_conditioned():
    trainer = bf16_trainer()
    layers = [layer for _, layer in low_rank_layers(trainer.model)]
    seen = []
    handle = layers[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    losses = []
    for _ in range(4):
        for _ in range(10):
            if trainer.epoch_complete:
                trainer.end_epoch()
            assert trainer.train_step()
        losses.append(trainer.read_window()[0])
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert losses[-1] < losses[0]
    tau = trainer.tau
    for layer in layers:
        assert {p.dtype for p in layer.parameters()} == {torch.float32}
        for factor in (layer.U, layer.V):
            factor = factor.detach()
            assert (factor.T @ factor - torch.eye(layer.rank)).abs().max() <= 1e-5
        sigma = torch.linalg.svdvals(layer.S.detach().double())
        assert sigma[0] / sigma[-1] <= 1 + tau + 1e-5
    momentum = trainer.optimizer.state[layers[0].U]["momentum_buffer"]
    assert momentum.dtype == torch.float32


def test_a_float32_run_stays_in_float32():
    config = small_config()
    trainer = Trainer(config, load_run_data(config, torch.device("cpu")), torch.device("cpu"))
    layer = next(layer for _, layer in low_rank_layers(trainer.model))
    seen = []
    layer.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    trainer.train_step()
    assert seen == [torch.float32]


@pytest.mark.parametrize("key, value", [("precision", "fp16"), ("precision", 16), ("cuda_graphs", "yes")])
def test_bad_precision_and_cuda_graphs_values_are_refused_naming_the_key_and_what_is_allowed(key, value):
    with pytest.raises(PresetError, match=rf"{key} = .*must be one of"):
        RunConfig(**{key: value})


def test_the_header_shows_a_bf16_run_on_its_device(tmp_path):
    try:
        engine = start_engine(tmp_path, precision="bf16")
        snap = wait_for(engine, lambda s: s.step > 0)
        assert snap.device == "cpu · bf16"
        assert any(e.message.endswith("on cpu · bf16 at step 0") for e in snap.events)
    finally:
        stop_started_engines()
    config = small_config()
    assert Trainer(config, load_run_data(config, torch.device("cpu")), torch.device("cpu")).execution == []
    assert describe_device(torch.device("mps")) == "mps"  # not "cpu", as every device but CUDA once was
