"""Data-parallel training on torch.distributed: which process this is, how a batch is split
between processes, the collectives the Trainer needs, and keeping the CondLR factors identical.

torchrun (torch.distributed.run) starts the processes and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``init_process_group`` joins them (NCCL on CUDA, one GPU per process chosen by
LOCAL_RANK; gloo on CPU). Nothing here launches processes or moves bytes by itself.

The global batch stays the preset's ``batch_size``: every rank draws the same permutation from
the shared seed and takes its contiguous shard of each global batch (``Ranks.shard``).
DistributedDataParallel averages gradients over the W ranks, so each rank's loss is
``W / n · Σ_shard ℓ_i`` for a global batch of n samples: the average over ranks is then exactly
the global mean ``1/n · Σ ℓ_i``, also for a last batch that does not split evenly (its shards
differ by one sample; nothing is dropped or padded). With W = 1 it is the ordinary mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rlr_engine.core.errors import DeviceUnavailable


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: global ``rank``, ``world_size`` and ``local_rank`` (its
    GPU on this node). The default is the single-process job, where every collective is a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone owns the run directory, the metrics, the checkpoints and the control socket."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items: sizes differ by at most one, earlier ranks get
        the extra ones; the shards of all ranks, in rank order, are exactly range(n)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def place(self, device: torch.device) -> torch.device:
        """The device this rank trains on: its own GPU (LOCAL_RANK) when a data-parallel run is on
        CUDA, and always a CUDA device with an index (``torch.cuda.set_device`` takes no other),
        also for a job of one process: ``cuda`` then means GPU ``local_rank`` (0 outside torchrun)."""
        if device.type == "cuda" and (self.distributed or device.index is None):
            return torch.device("cuda", self.local_rank)
        return device

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Σ over ranks, in place (a no-op for one process)."""
        if self.distributed:
            dist.all_reduce(values)
        return values

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training forward goes through: DistributedDataParallel around ``model``
        (gradients averaged over ranks during backward), or ``model`` itself for one process.
        Building it broadcasts rank 0's parameters and buffers to every rank (a collective)."""
        if not self.distributed:
            return model
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Ranks()


def ranks_from_environment() -> Ranks:
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def join_process_group(ranks: Ranks, device: torch.device, timeout: timedelta | None = None) -> None:
    """init_process_group from torchrun's environment: NCCL when training on CUDA (after
    selecting this rank's GPU), gloo on CPU. ``timeout`` bounds every collective (torch's
    default when None)."""
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if device.index is None or device.index >= visible:
            raise DeviceUnavailable(
                f"rank {ranks.rank} would train on {device} but {visible} CUDA GPU(s) are visible: "
                f"start at most {visible} process(es) per machine on CUDA"
            )
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def leave_process_group(wait_for_others: bool = False) -> None:
    """Destroy the process group; with ``wait_for_others`` only once every rank has got here (a
    barrier), so that no rank tears its group down while another still uses it (rank 0's last
    collectives). Not after a failure: the others may never arrive, and torchrun stops them."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()


# -- keeping the ranks identical ----------------------------------------------------------------
def _replicated_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Everything that must be equal on every rank, in an order every rank agrees on: parameters,
    buffers, and the optimizer state of each parameter (momentum, the κ step scale)."""
    tensors = list(model.parameters()) + list(model.buffers())
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            tensors += [state[key] for key in sorted(state) if isinstance(state[key], torch.Tensor)]
    return tensors


def factor_checksum(model: nn.Module) -> torch.Tensor:
    """Σ_p (Σ p + Σ p²) in float64 over all parameters: equal on ranks that hold bit-identical
    weights, and moved by any drift that is not an exact cancellation."""
    total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for p in model.parameters():
        d = p.detach().double()
        total += d.sum() + d.square().sum()
    return total


def repair_drift(ranks: Ranks, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Compare the parameter checksum across ranks (one all-reduce of [c, −c] with MAX, giving
    max and −min); when they differ, broadcast rank 0's parameters, buffers and optimizer state.

    CondLR's QR and SVD run on every rank on identical inputs, so the factors should stay
    bit-identical; nondeterministic kernels can still make them drift. Returns the spread
    max − min of the checksum (0.0: no drift, nothing sent). The comparison is exact on purpose:
    ranks are either identical or they are not, and realigning costs one broadcast."""
    if not ranks.distributed:
        return 0.0
    c = factor_checksum(model)
    bounds = torch.stack([c, -c])
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    spread = float(bounds[0] + bounds[1])
    if spread == 0.0:
        return 0.0
    with torch.no_grad():
        for tensor in _replicated_tensors(model, optimizer):
            dist.broadcast(tensor, src=0)
    return spread
