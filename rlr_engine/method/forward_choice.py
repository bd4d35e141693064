"""Choosing each low-rank layer's forward by timing it on the device it runs on, as
``torch.backends.cudnn.benchmark`` chooses convolution algorithms.

A layer's "factored" forward (x Vᵀ, then U S) does r(m + n) multiply-adds per output position
against mn for the "composed" one (W = U S Vᵀ formed, then one dense kernel), but launches more
kernels, and its two thin products can use a GPU worse than one wide one. Which wins depends on the
layer's shape and rank, the batch, the dtype and the device, so it is measured: forward and
backward of the layer alone on the input it sees in the model, both ways, medians by
``torch.utils.benchmark`` (which synchronises CUDA around what it times) — eagerly
(``median_seconds``), or, for a step replayed as a CUDA graph, where launches cost nothing,
captured and replayed the same way (``graphed_median_seconds``). Choices are kept per (layer,
rank, input shape, dtype): a rank that comes back is not timed again.

The choice follows timings, so two runs on one machine may choose differently and then differ
by rounding: the price of cudnn.benchmark too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlr_engine.core.catalog import LOW_RANK_FORWARDS
from rlr_engine.method.lowrank import LowRankLayer, low_rank_layers


@dataclass(frozen=True)
class ForwardChoice:
    """The forward chosen for one layer at one rank, and the median seconds of one forward +
    backward of the layer each way."""

    layer: str
    rank: int
    mode: str
    factored: float
    composed: float

    def describe(self) -> str:
        other = "composed" if self.mode == "factored" else "factored"
        mine, theirs = (self.factored, self.composed) if self.mode == "factored" else (self.composed, self.factored)
        return f"{self.layer} {self.mode} ({1e3 * mine:.3g} ms against {1e3 * theirs:.3g} {other})"


def tunes_forwards(setting: str, device: torch.device, compiled: bool = False) -> bool:
    """Whether a low-rank forward setting of ``setting`` ("auto", or one of LOW_RANK_FORWARDS
    for all layers) is decided by timing on ``device``: "auto" on an accelerator, for a model that
    is not compiled. Otherwise "auto" is the factored forward: on the CPU runs stay reproducible
    from one machine to the next, and in channels-last it was the faster for every layer of LeNet5
    and VGG16 at batch 128 (contiguous, LeNet5's one-channel first convolution is faster composed;
    ``benchmarks/README.md``); torch.compile traces the whole forward, so a layer
    timed alone says little of it, and every change of forward would compile again."""
    return setting == "auto" and device.type != "cpu" and not compiled


def median_seconds(work: Callable[[], object], min_run_time: float = 0.02) -> float:
    """The median time of ``work()`` by ``torch.utils.benchmark`` (blocks of runs until
    ``min_run_time`` seconds have been measured, after a warm-up call)."""
    # Imported where something is timed (on an accelerator): loading torch.utils.benchmark loads
    # torch.utils.cpp_extension, which logs a warning about CUDA_HOME on every start of a machine
    # that has a CUDA build of torch but no CUDA runtime.
    from torch.utils import benchmark

    return benchmark.Timer(stmt="work()", globals={"work": work}).blocked_autorange(min_run_time=min_run_time).median


def graphed_median_seconds(work: Callable[[], object], min_run_time: float = 0.02) -> float:
    """``median_seconds`` of ``work`` captured as a CUDA graph and replayed, as a captured
    training step runs it (after two eager calls on a side stream, which allocate outside the
    capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            work()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        work()
    return median_seconds(graph.replay, min_run_time)


def layer_inputs(model: nn.Module, x: Tensor, autocast: torch.dtype | None = None) -> dict[str, Tensor]:
    """What each low-rank layer of ``model`` receives in a forward on ``x``, detached, and marked
    as needing a gradient where it does in training (any layer after a trained parameter; not
    the first layer's input, however the model transforms it before). In eval mode, so no
    batch-norm statistic moves and no dropout draws a random number; the model's mode is restored.
    """
    inputs: dict[str, Tensor] = {}

    def keep(name: str, args: tuple) -> None:
        inputs.setdefault(name, args[0].detach().requires_grad_(args[0].requires_grad))

    hooks = [
        layer.register_forward_pre_hook(lambda _, args, name=name: keep(name, args))
        for name, layer in low_rank_layers(model)
    ]
    training = model.training
    try:
        model.eval()
        # with gradients, for requires_grad; nothing is kept of the graph
        with (
            torch.enable_grad(),
            torch.autocast(x.device.type, autocast or torch.bfloat16, enabled=autocast is not None),
        ):
            model(x)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return inputs


class ForwardTuner:
    """Sets every low-rank layer of a model to its faster forward (module docstring).

    Args:
        measure: seconds of one call of a function (by default ``median_seconds``); tests pass
            their own.
    """

    def __init__(self, measure: Callable[[Callable[[], object]], float] = median_seconds) -> None:
        self.measure = measure
        self._chosen: dict[tuple, ForwardChoice] = {}

    def tune(self, model: nn.Module, x: Tensor, autocast: torch.dtype | None = None) -> list[ForwardChoice]:
        """Give each low-rank layer of ``model`` the forward that runs faster on the input it
        sees in a forward on the batch ``x`` (under autocast to ``autocast`` where given); returns
        the choices timed now, in layer order (none where every layer's case was timed before)."""
        timed = []
        for name, inputs in layer_inputs(model, x, autocast).items():
            layer = model.get_submodule(name)
            assert isinstance(layer, LowRankLayer)
            key = (name, layer.rank, tuple(inputs.shape), inputs.dtype, autocast)
            choice = self._chosen.get(key)
            if choice is None:
                choice = self._chosen[key] = self._time(name, layer, inputs, autocast)
                timed.append(choice)
            layer.set_forward_mode(choice.mode)
        return timed

    def _time(self, name: str, layer: LowRankLayer, inputs: Tensor, autocast: torch.dtype | None) -> ForwardChoice:
        wrt: list[Tensor] = [p for p in (layer.U, layer.S, layer.V, layer.bias) if p is not None and p.requires_grad]
        wrt += [inputs] if inputs.requires_grad else []
        device = inputs.device.type
        seconds = {}
        previous = layer.forward_mode
        for mode in LOW_RANK_FORWARDS:
            layer.set_forward_mode(mode)

            def forward_backward() -> object:
                with (
                    torch.enable_grad(),
                    # no cast cache, which PyTorch does not support in a CUDA graph's capture
                    torch.autocast(
                        device, autocast or torch.bfloat16, enabled=autocast is not None, cache_enabled=False
                    ),
                ):
                    out = layer(inputs)
                if not wrt:  # a frozen layer after a frozen network: nothing to differentiate
                    return out
                return torch.autograd.grad(out, wrt, torch.ones_like(out))

            seconds[mode] = self.measure(forward_backward)
        layer.set_forward_mode(previous)
        mode = min(LOW_RANK_FORWARDS, key=lambda m: seconds[m])  # a tie keeps the factored one
        return ForwardChoice(name, layer.rank, mode, seconds["factored"], seconds["composed"])
