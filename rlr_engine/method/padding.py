"""Matrices of different shapes as the blocks of one zero-padded batch, copied in and out with a
fixed number of kernels whatever their number.

A foreach copy into the blocks themselves would be one operation on the host but not on a GPU:
a block [:m, :r] of an M×R entry is a strided view (its rows are not adjacent when r < R), and
CUDA runs a ``_foreach_copy_`` over tensors that are not non-overlapping and dense as one kernel
per tensor (``_check_tensors_share_device_and_dtype`` in ATen's ``ForeachUtils.h``). Here the
blocks' elements are addressed through one flat index instead: in, a concatenation and one
``index_copy_``; out, one ``index_select`` and one foreach copy of its contiguous chunks (dense,
so one kernel). The index costs one int64 per element of the blocks (VGG16's factors at rank
fraction 0.2, both slots: 7·10⁶ entries, 57 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import Tensor


class BlockIndex:
    """Where the blocks [:m_i, :r_i] of the entries i of a buffer (slots, N, M, R) lie in its
    flat storage, slot after slot: block k of the index is entry k mod N of slot k // N.

    Args:
        shapes: (m_i, r_i) of the N entries, in batch order.
        entry: (M, R), the padded shape of an entry.
        slots: how many batches of N entries the buffer stacks.
        device: where the buffer lives.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], entry: tuple[int, int], slots: int, device: torch.device):
        rows, cols = entry
        count = len(shapes)
        # made on the device (a copy from host memory would wait for it); once per set of shapes
        parts = [
            torch.add(torch.arange(m, device=device)[:, None] * cols, torch.arange(r, device=device), alpha=1).reshape(
                -1
            )
            + (slot * count + i) * rows * cols
            for slot in range(slots)
            for i, (m, r) in enumerate(shapes)
        ]
        self.index = torch.cat(parts)
        self.offsets = [0, *accumulate(m * r for m, r in list(shapes) * slots)]

    def load(self, buffer: Tensor, tensors: Sequence[Tensor], first: int = 0) -> None:
        """Copies ``tensors`` into blocks ``first``, ``first`` + 1, … of ``buffer`` (cast to its dtype)."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        if flat.dtype != buffer.dtype:
            flat = flat.to(buffer.dtype)
        buffer.view(-1).index_copy_(0, self._positions(first, len(tensors)), flat)

    def unload(self, buffer: Tensor, tensors: Sequence[Tensor], first: int = 0) -> None:
        """Copies blocks ``first``, ``first`` + 1, … of ``buffer`` into ``tensors`` (cast to theirs)."""
        flat = buffer.reshape(-1).index_select(0, self._positions(first, len(tensors)))
        if flat.dtype != tensors[0].dtype:
            flat = flat.to(tensors[0].dtype)
        chunks = flat.split([self.offsets[k + 1] - self.offsets[k] for k in range(first, first + len(tensors))])
        torch._foreach_copy_(list(tensors), [chunk.view(t.shape) for chunk, t in zip(chunks, tensors)])

    def _positions(self, first: int, count: int) -> Tensor:
        return self.index[self.offsets[first] : self.offsets[first + count]]  # a view
