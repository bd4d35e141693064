"""The method as a library: low-rank layers W = U S Vᵀ (``lowrank``), the Stiefel manifold's
operations (``manifold``, ``matrix_functions``), the CondLR optimizer (``condlr``) and rank
adaptation (``adaptive``). It knows nothing of runs, files or dashboards: any training loop can
use it.

    model = to_low_rank(model, rank_fraction=0.2)
    optimizer = CondLR(model, lr=0.1, momentum=0.3, tau=0.1)
"""

from rlr_engine.method.adaptive import RankAdaptation, core_optimizer
from rlr_engine.method.condlr import CondLR, RankChange
from rlr_engine.method.lowrank import (
    LowRankConv2d,
    LowRankLayer,
    LowRankLinear,
    ParameterReport,
    low_rank_layers,
    parameter_report,
    rank_for_energy,
    to_dense,
    to_low_rank,
)

__all__ = [
    "CondLR",
    "LowRankConv2d",
    "LowRankLayer",
    "LowRankLinear",
    "ParameterReport",
    "RankAdaptation",
    "RankChange",
    "core_optimizer",
    "low_rank_layers",
    "parameter_report",
    "rank_for_energy",
    "to_dense",
    "to_low_rank",
]
