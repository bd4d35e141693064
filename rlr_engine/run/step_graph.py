"""The whole training step — forward, loss, backward and optimizer step — captured once as a CUDA
graph and replayed for every batch of the same shape, so a step costs one graph launch instead of
hundreds of kernel launches (at LeNet5 / VGG16 sizes a GPU is bound by launches, not FLOPs).

A graph replays fixed kernels on fixed memory: the batch is copied into static input buffers, and
everything that decides *which* kernels run or *on what memory* is the capture key (``capture_key``):
the parameters' identities, memory and shapes (a truncation replaces them), the optimizer state's
tensors and the optimizer's own workspaces — padded batches, device hyperparameters — and their
memory (loading a checkpoint or an undo may replace them; an undo or a resume builds a new
optimizer), the batch shape (the last, shorter batch of an epoch), each low-rank layer's forward
(factored or composed), and what the optimizer's step decides from Python numbers
(``CondLR.capture_structure``). A change of the key captures again (about one eager step's cost).
The optimizer of a captured step is ``capturable``: it reads lr, momentum, weight decay and τ from
device tensors, which ``StepGraph`` has it refresh before every replay, so a new learning rate or
τ (a milestone, a command) takes effect at the next step without a capture; only τ's regime (0,
finite, ∞ take different branches), a momentum or decay turned on or off, or groups that stop or
start sharing a learning rate or momentum capture again.

``graphs_wanted`` resolves the ``cuda_graphs`` setting: "on" captures (refused without CUDA), "off"
and "auto" train eagerly — "auto" is to choose by timing the first steps on the run's device, and
until the captured step has been checked and timed on a GPU (``benchmarks/gpu_check.sh``) it
keeps the eager step that is known to be right. Methods whose step decides on the host (rank-adaptive
windows) and data-parallel runs (DDP's all-reduce hooks) train eagerly; "on" is refused for them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from rlr_engine.method.condlr import CondLR
from rlr_engine.method.lowrank import low_rank_layers


def capture_key(model: nn.Module, optimizer: CondLR, batch_shape: tuple[int, ...]) -> tuple:
    """What a captured step depends on beyond the contents of its tensors (module docstring)."""
    # a graph reads and writes fixed addresses: the memory (data_ptr), not only the objects (id),
    # which keep their identity when their storage is swapped (``p.data = ...``)
    params = tuple((id(p), p.data_ptr(), tuple(p.shape)) for p in model.parameters())
    state = tuple(
        (id(t), t.data_ptr()) for entry in optimizer.state.values() for t in entry.values() if isinstance(t, Tensor)
    )
    state += tuple((id(t), t.data_ptr()) for t in optimizer.workspaces())
    forwards = tuple(layer.forward_mode for _, layer in low_rank_layers(model))
    return params, state, optimizer.capture_structure(), forwards, tuple(batch_shape)


def graphs_wanted(setting: str, device: torch.device, processes: int = 1) -> bool:
    """Whether ``cuda_graphs`` = ``setting`` captures the step on ``device`` in a job of
    ``processes``: only "on" does (module docstring). Raises ValueError for "on" in a
    data-parallel job or where the device is not a CUDA GPU; the config refuses it for
    rank-adaptive methods and ``reference_compat`` (RunConfig)."""
    if setting == "on" and processes > 1:
        raise ValueError(
            f"cuda_graphs = 'on' captures the step of one process, but the run trains in {processes} "
            "(DDP's all-reduce runs outside a graph); use 'auto' or 'off'"
        )
    if setting == "on" and device.type != "cuda":
        raise ValueError(f"cuda_graphs = 'on' needs a CUDA device, but the run trains on {device}; use 'auto' or 'off'")
    return setting == "on"


class StepGraph:
    """Replays ``step(x, y) -> outputs`` (forward, backward, optimizer step; outputs a tuple of
    tensors) as a CUDA graph, capturing it again whenever ``key`` changes.

    The first ``warmup`` steps under a new key run eagerly on a side stream (they are real
    steps: they allocate the optimizer's state and cuBLAS workspaces outside the capture); the
    next is captured and replayed at once. ``captures`` counts the captures made.

    Args:
        step: the training step; must not synchronise with the host or allocate host tensors.
        zero_grad: sets every gradient to None before a capture, so the graph owns them.
        prepare: runs before every step, eager, captured or replayed, outside any capture: brings
            the device tensors the step reads its hyperparameters from up to date
            (``CondLR.refresh_hyperparameters``).
        warmup: eager steps before a capture.
    """

    def __init__(
        self,
        step: Callable[[Tensor, Tensor], tuple[Tensor, ...]],
        zero_grad: Callable[[], None],
        prepare: Callable[[], object],
        warmup: int = 2,
    ) -> None:
        self.step, self.zero_grad, self.prepare, self.warmup = step, zero_grad, prepare, warmup
        self.captures = 0
        self._key: tuple | None = None
        self._eager_steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[Tensor, Tensor] | None = None
        self._outputs: tuple[Tensor, ...] = ()

    def __call__(self, x: Tensor, y: Tensor, key_now: Callable[[], tuple]) -> tuple[Tensor, ...]:
        """One step on the batch (x, y); ``key_now()`` gives the capture key, read after ``prepare``
        (which may make the tensors the key names)."""
        self.prepare()
        key = key_now()
        if key != self._key:
            self._key, self._graph, self._eager_steps = key, None, 0
        if self._graph is None and self._eager_steps < self.warmup:
            self._eager_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.zero_grad()
                outputs = self.step(x, y)
            torch.cuda.current_stream().wait_stream(side)
            return outputs
        if self._graph is None:
            self._inputs = (x.clone(), y.clone())
            self.zero_grad()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._outputs = self.step(*self._inputs)
            self._graph = graph
            self.captures += 1
        else:
            assert self._inputs is not None
            self._inputs[0].copy_(x)
            self._inputs[1].copy_(y)
        self._graph.replay()
        return self._outputs
