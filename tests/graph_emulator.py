"""A CUDA graph's replay semantics on the CPU, so the code around a captured step can be tested
where no GPU is.

A CUDA graph records the kernels of a capture with their arguments — pointers into fixed memory
and numbers — and a replay runs them again, reading whatever that memory holds then and writing
the same places, and a capture itself changes nothing. ``EmulatedGraph`` does the same with ATen
operations: a capture records every operation (below autograd, so the backward's too) with its
argument tensors and numbers and the tensors it produced, and afterwards puts back every tensor
an operation wrote into; a replay runs each again on the same tensor objects and writes its
results into the tensors the capture produced. So a number the step passed as a Python value stays what it
was at the capture, a tensor the step reads is read anew, and a tensor made after the capture (a
new optimizer's, a truncated layer's) is never seen — as on a GPU. An operation that hands a
value to the host (``item()``, a comparison returning a bool) fails the capture, as a
synchronisation does under CUDA graph capture.

``emulate_cuda_graphs(monkeypatch)`` puts it in the place of ``torch.cuda.graph``, ``CUDAGraph``
and the stream functions ``StepGraph`` uses, and reports captures to ``capturing()``.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rlr_engine.method import device_hyperparameters


class _Recording(TorchDispatchMode):
    def __init__(self, ops: list) -> None:
        super().__init__()
        self.ops = ops
        self.before: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # what each written tensor held

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, argument in enumerate(func._schema.arguments):
            if argument.alias_info is not None and argument.alias_info.is_write:
                written = args[i] if i < len(args) else kwargs.get(argument.name)
                for t in tree_leaves(written):
                    if isinstance(t, torch.Tensor) and id(t) not in self.before:
                        self.before[id(t)] = (t, t.clone())
        out = func(*args, **kwargs)
        if func.namespace == "profiler":  # marks around Optimizer.step: no kernel to replay
            return out
        leaves = tree_leaves(out)
        if any(not isinstance(leaf, torch.Tensor) for leaf in leaves if leaf is not None):
            raise RuntimeError(f"{func} hands a value to the host: a CUDA graph cannot capture it")
        self.ops.append((func, args, kwargs, leaves))
        return out


class EmulatedGraph:
    """Stands for ``torch.cuda.CUDAGraph``: filled by ``capture``, run again by ``replay``."""

    active = 0  # captures under way (capturing() reads it)

    def __init__(self) -> None:
        self.ops: list = []
        self.replays = 0

    @contextlib.contextmanager
    def capture(self):
        EmulatedGraph.active += 1
        recording = _Recording(self.ops)
        try:
            with recording:
                yield
        finally:
            EmulatedGraph.active -= 1
            with torch.no_grad():  # a capture runs nothing: what it wrote is put back
                for tensor, held in recording.before.values():
                    tensor.copy_(held)

    def replay(self) -> None:
        self.replays += 1
        with torch.no_grad():
            for func, args, kwargs, captured in self.ops:
                fresh = tree_leaves(func(*args, **kwargs))
                for old, new in zip(captured, fresh):
                    if old is not None and old is not new:
                        old.copy_(new)


class _Stream:
    def wait_stream(self, other) -> None:
        pass


def emulate_cuda_graphs(monkeypatch) -> None:
    """Run ``StepGraph`` (and everything asking ``capturing()``) on ``EmulatedGraph``."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", EmulatedGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: graph.capture())
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", _Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(device_hyperparameters, "capturing", lambda: EmulatedGraph.active > 0)
