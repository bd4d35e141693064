"""Per-layer spectra and whole-model measures read from a live model."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from rlr_engine.control.records import LayerStats
from rlr_engine.method.lowrank import LowRankLayer, full_rank_of


def compressible_layers(model: nn.Module) -> list[tuple[str, LowRankLayer | nn.Linear | nn.Conv2d]]:
    """Every low-rank layer and every dense Linear / Conv2d, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LowRankLayer, nn.Linear, nn.Conv2d))]


@torch.no_grad()
def layer_stats(model: nn.Module) -> tuple[LayerStats, ...]:
    """Singular values of every compressible layer's weight matrix.

    Low-rank layers use σ(S) (= σ(W) since U, V are orthonormal), batched over cores of equal
    rank; dense layers use σ of their weight reshaped to (c_out, c_in·kh·kw). One transfer to
    the host at the end."""
    layers = compressible_layers(model)
    matrices = {}
    for name, module in layers:
        matrices[name] = module.live_factors()[1] if isinstance(module, LowRankLayer) else module.weight.flatten(1)
    by_shape = defaultdict(list)
    for name, matrix in matrices.items():
        by_shape[tuple(matrix.shape)].append(name)
    sigmas = {}
    for names in by_shape.values():
        values = torch.linalg.svdvals(torch.stack([matrices[n].detach().float() for n in names])).cpu()
        for n, s in zip(names, values):
            sigmas[n] = tuple(s.tolist())
    stats = []
    for name, module in layers:
        full = full_rank_of(module)
        if isinstance(module, LowRankLayer):
            stats.append(LayerStats(name, (module.out_dim, module.in_dim), module.rank, full, sigmas[name], True))
        else:
            rows, columns = matrices[name].shape
            stats.append(LayerStats(name, (rows, columns), full, full, sigmas[name], False))
    return tuple(stats)
