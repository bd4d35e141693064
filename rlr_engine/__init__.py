"""rlr engine: low-rank layers, the CondLR optimizer, and everything that trains, measures and
attacks. Never imports the dashboard.

The package itself imports nothing heavy: ``rlr_engine.records``, ``protocol``, ``client`` and
``runs`` are torch-free so a dashboard can use them; the names below load torch on first use
(PEP 562 module ``__getattr__``)."""

from importlib import import_module

_LAZY = {"CondLR": "condlr", "RankAdaptation": "adaptive", "core_optimizer": "adaptive", "RankChange": "condlr", "LowRankConv2d": "lowrank", "LowRankLayer": "lowrank",
         "LowRankLinear": "lowrank", "ParameterReport": "lowrank", "low_rank_layers": "lowrank",
         "parameter_report": "lowrank", "to_low_rank": "lowrank"}

__all__ = list(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
