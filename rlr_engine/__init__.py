"""rlr engine: low-rank layers, the CondLR optimizer, and everything that trains, measures and
attacks. Never imports the dashboard."""

from .adaptive import RankAdaptation, core_optimizer
from .condlr import CondLR, RankChange
from .lowrank import (LowRankConv2d, LowRankLayer, LowRankLinear, ParameterReport, low_rank_layers,
                      parameter_report, to_low_rank)

__all__ = ["CondLR", "RankAdaptation", "RankChange", "core_optimizer", "LowRankConv2d", "LowRankLayer",
           "LowRankLinear", "ParameterReport", "low_rank_layers", "parameter_report", "to_low_rank"]
__version__ = "0.1.0"
