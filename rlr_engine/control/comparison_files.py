"""The files of a comparison directory (``rlr compare --out DIR``), named once: the engine writes
them, the dashboard's comparison screen reads them. Torch-free.

``DIR/``
  comparison.json            what was asked (presets, seeds, overrides, attacks, the command)
  runs/<preset>-seed<k>/     ordinary run directories (reused when finished, resumed otherwise)
  results.md, results.csv    per method: accuracy per ε (mean ± std over seeds), ranks, κ, time,
                             and the sanity flags of each method
  results.json               the same rows, for the dashboard
  accuracy_vs_eps_<attack>.png, kappa_per_layer.png
"""

from __future__ import annotations

SPEC = "comparison.json"
RUNS = "runs"
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
KAPPA_PLOT = "kappa_per_layer.png"


def accuracy_plot(attack: str) -> str:
    """The plot of accuracy against ε under ``attack``."""
    return f"accuracy_vs_eps_{attack}.png"
