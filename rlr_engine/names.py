"""The names the engine accepts — attacks, data sets, models, step scalings, devices — in one torch-free
place, so presets can be validated (and a dashboard can offer them) without loading torch.

Data sets and models are described in ``catalog`` (their shapes and input needs); their names
are taken from there. The modules that implement them (attacks.py, data.py, models.py,
condlr.py) check at import time that they implement exactly these."""

from __future__ import annotations

from .catalog import ATTACKS as _ATTACK_FACTS
from .catalog import DATASETS as _DATASET_FACTS
from .catalog import MODEL_INPUTS as _MODEL_INPUTS

ATTACKS = tuple(_ATTACK_FACTS)
DATASETS = tuple(_DATASET_FACTS)
MODELS = tuple(_MODEL_INPUTS)
STEP_SCALINGS = ("reference", "alpha", "none")
ADAPTIVE_METHODS = ("robust-dlrt", "condlr-adaptive")
CORE_OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")  # presets also take cuda:N
