"""Robustness of a saved checkpoint (``rlr eval``, ``rlr compare``): load it with the config
stored beside it, and its test set to attack."""

from __future__ import annotations

from pathlib import Path

import torch

from rlr_engine.control.run_dirs import find_checkpoint, read_run_config
from rlr_engine.control.run_files import CONFIG
from rlr_engine.core.config import RunConfig, validate
from rlr_engine.core.errors import CheckpointError
from rlr_engine.core.presets import FIXED_ON_RESUME
from rlr_engine.run.checkpoint import load_checkpoint, load_model_state
from rlr_engine.run.network import build_network, load_run_data
from rlr_engine.run.trainer import resolve_device


def check_agrees_with_run(stored: RunConfig, checkpoint: Path) -> None:
    """A checkpoint in a run directory must have been trained with what that directory's
    config.toml says it trains (data set, model, method, ranks, seed, split); CheckpointError
    naming both values of the first setting that differs otherwise. A checkpoint outside a run
    directory is read with its own config alone."""
    config_path = checkpoint.parent / CONFIG
    if not config_path.is_file():
        return
    run = read_run_config(checkpoint.parent)
    for key in FIXED_ON_RESUME:
        mine, theirs = getattr(stored, key), getattr(run, key)
        if mine != theirs:
            raise CheckpointError(
                f"checkpoint {checkpoint} was trained with {key} = {mine!r}, but its run directory's "
                f"{CONFIG} says {key} = {theirs!r} ({config_path}): the checkpoint belongs to another "
                f"run; evaluate it from its own run directory or copy it out"
            )


def load_evaluation_target(checkpoint: str | Path, samples: int = 0, device: str = "auto", data_dir: str | None = None):
    """Load a saved model with the config stored beside it, in eval mode, and its test set (or a
    seeded subset of ``samples`` images) for attacking.
    Returns (config, step, model, uint8 images, labels)."""
    dev = resolve_device(device)
    path = find_checkpoint(checkpoint)
    payload = load_checkpoint(path, dev)
    config = validate(payload["config"], source=f"{path} (stored config)")
    check_agrees_with_run(config, path)
    if data_dir:
        config = config.replace(data_dir=data_dir)
    data = load_run_data(config, dev)
    model = build_network(config, data, pretrained=False).to(dev)  # the checkpoint holds the weights
    load_model_state(model, payload, path)
    images, labels = data.test.images, data.test.labels
    if samples:
        subset = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:samples].to(dev)
        images, labels = images[subset], labels[subset]
    return config, payload["step"], model.eval(), images, labels
