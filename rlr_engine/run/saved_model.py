"""Robustness of a saved checkpoint (``rlr eval``, ``rlr compare``): load it with the config
stored beside it, and its test set to attack."""

from __future__ import annotations

from pathlib import Path

import torch

from rlr_engine.run.checkpoint import load_checkpoint, load_model_state
from rlr_engine.run.network import build_network, load_run_data
from rlr_engine.run.trainer import resolve_device


def load_evaluation_target(checkpoint: str | Path, samples: int = 0, device: str = "auto", data_dir: str | None = None):
    """Load a saved model with the config stored beside it, in eval mode, and its test set (or a
    seeded subset of ``samples`` images) for attacking.
    Returns (config, step, model, uint8 images, labels)."""
    from rlr_engine.core.config import validate

    dev = resolve_device(device)
    payload = load_checkpoint(checkpoint, dev)
    config = validate(payload["config"], source=f"{checkpoint} (stored config)")
    if data_dir:
        config = config.replace(data_dir=data_dir)
    data = load_run_data(config, dev)
    model = build_network(config, data, pretrained=False).to(dev)  # the checkpoint holds the weights
    load_model_state(model, payload, checkpoint)
    images, labels = data.test.images, data.test.labels
    if samples:
        subset = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:samples].to(dev)
        images, labels = images[subset], labels[subset]
    return config, payload["step"], model.eval(), images, labels
