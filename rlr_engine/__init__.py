"""rlr engine: robust low-rank training (CondLR) as a library, and the machinery that trains,
measures, attacks and serves runs. Never imports the dashboard.

Its tiers are sub-packages, each importing only those below it (checked by the import-linter
contracts in pyproject.toml):

- ``cli``      the ``rlr`` command line, one module per command;
- ``run``      a run: trainer, engine loop, command handlers, recorder, checkpoints, control
               server, the engine process, data parallelism, comparisons;
- ``workload`` what is trained and measured: data sets, models, attacks, spectra;
- ``method``   the method as a library that knows nothing of runs: low-rank layers, the CondLR
               optimizer, the Stiefel manifold, rank adaptation;
- ``control``  the control surface, torch-free: records, the protocol, the client, run
               directories (all that the dashboard imports, with ``core``);
- ``core``     plain facts and validation, torch-free: the catalog, value checks, the run
               config and presets, sanity checks.

The package itself imports nothing heavy; the method's names below load torch on first use
(PEP 562 module ``__getattr__``)."""

from importlib import import_module
from typing import Any

_METHOD = (
    "CondLR",
    "RankAdaptation",
    "core_optimizer",
    "RankChange",
    "LowRankConv2d",
    "LowRankLayer",
    "LowRankLinear",
    "ParameterReport",
    "low_rank_layers",
    "parameter_report",
    "rank_for_energy",
    "to_dense",
    "to_low_rank",
)

__all__ = list(_METHOD)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _METHOD:
        return getattr(import_module(".method", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
