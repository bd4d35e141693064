"""The names the engine accepts — attacks, data sets, models, step scalings — in one torch-free
place, so presets can be validated (and a dashboard can offer them) without loading torch.

The modules that implement them (attacks.py, data.py, models.py, condlr.py) check at import time
that they implement exactly these."""

from __future__ import annotations

ATTACKS = ("fgsm", "pgd-linf", "pgd-l2")
SYNTHETIC_DATASETS = ("synthetic", "synthetic-28", "synthetic-32")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", *SYNTHETIC_DATASETS)
MODELS = ("lenet5", "vgg16", "wrn16-4", "digits-cnn", "mlp")
STEP_SCALINGS = ("reference", "alpha", "none")
