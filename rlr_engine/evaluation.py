"""Robustness of a saved checkpoint (``rlr eval``, ``rlr compare``): load it with the config
stored beside it and attack it on the test set."""

from __future__ import annotations

from pathlib import Path

import torch

from .attacks import adversarial_accuracy
from .checkpoint import load_checkpoint, load_model_state
from .data import load_dataset, to_float
from .trainer import build_network, resolve_device


def evaluate_checkpoint(checkpoint: str | Path, attack: str | None = None, eps=None, steps: int | None = None,
                        step_size: float | None = None, samples: int = 0, device: str = "auto",
                        data_dir: str | None = None):
    """Attack a saved model on the test set (or a seeded subset of ``samples`` images). Attack
    settings left None are the run's own. Returns (config, step, attack spec, accuracy per ε,
    number of images)."""
    from .presets import validate

    dev = resolve_device(device)
    payload = load_checkpoint(checkpoint, dev)
    config = validate(payload["config"], source=f"{checkpoint} (stored config)")
    spec = config.attack_spec(attack, eps, steps, step_size)
    data = load_dataset(config.dataset, data_dir or config.data_dir, config.download, config.val_fraction,
                        config.seed, dev)
    model = build_network(config, data).to(dev)
    load_model_state(model, payload, checkpoint)
    images, labels = data.test.images, data.test.labels
    if samples:
        subset = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:samples].to(dev)
        images, labels = images[subset], labels[subset]
    accuracy = adversarial_accuracy(model, images, labels, spec, to_input=to_float)
    return config, payload["step"], spec, accuracy, len(labels)
