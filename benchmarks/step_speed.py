"""Time one full training step (forward, backward, optimizer) for dense SGD, vanilla low-rank
(τ = ∞) and CondLR (τ = 0, τ = 0.1) at rank_fraction = 0.2, each also channels-last (CL), on
LeNet5 / MNIST-shaped and VGG16 / CIFAR-shaped synthetic batches. CondLR runs with the defaults of
the device — on the CPU the host path (Householder QR, SVD of the cores), elsewhere the device
path (CholeskyQR2, Newton polar iterations for the cores: no host synchronisation) — and at
τ = 0.1 also with the other path, to compare the two on the same device. Variants are measured
round-robin, so machine noise hits them alike; medians and ratios to the best dense variant (and
CondLR to τ = ∞) come from the same run.

    python3 benchmarks/step_speed.py [--models lenet5,vgg16] [--batch 128] [--repeats 7] [--device cuda] [--compile]
        [--bf16] [--graphs] [--reduce-overhead] [--forwards]

``--bf16`` adds the channels-last dense, τ = ∞ and CondLR τ = 0.1 variants with forward and
backward under autocast to bfloat16 (the optimizer step stays float32, as precision = "bf16" runs
it); ``--graphs`` (CUDA only) adds them, float32 and (with --bf16) bf16, with forward, backward and
step captured once as a CUDA graph and replayed, CondLR ``capturable`` as the engine runs it
(η, μ and τ read from device tensors: one more kernel per learning rate). ``--forwards`` adds
the low-rank CL variants with every layer's forward composed (W = U S Vᵀ formed, one dense
kernel) and with each layer's faster forward chosen by timing it (``method/forward_choice.py``,
what ``low_rank_forward = "auto"`` does on an accelerator; the choices are printed), the latter
also captured as a graph with ``--graphs``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from rlr_engine import CondLR, low_rank_layers, to_low_rank
from rlr_engine.method.forward_choice import ForwardTuner, graphed_median_seconds, median_seconds
from rlr_engine.workload.models import build_model, use_channels_last

SHAPES = {"lenet5": (1, 28), "vgg16": (3, 32)}
PATHS = {
    "host": {"retraction": "householder", "core_projection": "svd"},
    "device": {"retraction": "cholesky-qr2", "core_projection": "newton"},
}


def variants(
    device: torch.device,
    compiled: bool,
    bf16: bool = False,
    graphs: bool = False,
    reduce_overhead: bool = False,
    forwards: bool = False,
) -> tuple:
    """(label, τ (None: dense), channels_last, CondLR keyword arguments, torch.compile, options
    among "bf16", "graph", "reduce-overhead", "composed" and "tuned") and the ratios to print."""
    other = "device" if device.type == "cpu" else "host"
    found = [
        ("dense SGD", None, False, {}, False),
        ("low-rank τ=inf", math.inf, False, {}, False),
        ("CondLR τ=0", 0.0, False, {}, False),
        ("CondLR τ=0.1", 0.1, False, {}, False),
        (f"CondLR τ=0.1, {other}", 0.1, False, PATHS[other], False),
        ("dense SGD, CL", None, True, {}, False),
        ("low-rank τ=inf, CL", math.inf, True, {}, False),
        ("CondLR τ=0, CL", 0.0, True, {}, False),
        ("CondLR τ=0.1, CL", 0.1, True, {}, False),
        (f"CondLR τ=0.1, CL, {other}", 0.1, True, PATHS[other], False),
    ]
    ratios = [
        ("CondLR τ=0", "low-rank τ=inf"),
        ("CondLR τ=0.1", "low-rank τ=inf"),
        ("CondLR τ=0, CL", "low-rank τ=inf, CL"),
        ("CondLR τ=0.1, CL", "low-rank τ=inf, CL"),
        ("CondLR τ=0.1", f"CondLR τ=0.1, {other}"),
        ("CondLR τ=0.1, CL", f"CondLR τ=0.1, CL, {other}"),
    ]
    found = [entry + (frozenset(),) for entry in found]
    if compiled:
        found += [
            ("CondLR τ=0.1, compiled", 0.1, False, {}, True, frozenset()),
            ("CondLR τ=0.1, CL, compiled", 0.1, True, {}, True, frozenset()),
        ]
        ratios += [("CondLR τ=0.1, compiled", "CondLR τ=0.1"), ("CondLR τ=0.1, CL, compiled", "CondLR τ=0.1, CL")]
    options = [frozenset({"bf16"})] if bf16 else []
    if graphs:
        options += [frozenset({"graph"})] + ([frozenset({"bf16", "graph"})] if bf16 else [])
    if reduce_overhead:
        options.append(frozenset({"reduce-overhead"}))
    for option in options:
        suffix = ", " + " + ".join(sorted(option))
        for label, tau in (("dense SGD, CL", None), ("low-rank τ=inf, CL", math.inf), ("CondLR τ=0.1, CL", 0.1)):
            found.append((label + suffix, tau, True, {}, False, option))
        ratios += [
            ("CondLR τ=0.1, CL" + suffix, "dense SGD, CL" + suffix),
            ("CondLR τ=0.1, CL" + suffix, "low-rank τ=inf, CL" + suffix),
        ]
    low_rank_options = [frozenset({"composed"}), frozenset({"tuned"})] if forwards else []
    if forwards and graphs:
        low_rank_options.append(frozenset({"graph", "tuned"}))
    for option in low_rank_options:  # the forward of the low-rank layers: dense has none
        suffix = ", " + " + ".join(sorted(option))
        for label, tau in (("low-rank τ=inf, CL", math.inf), ("CondLR τ=0.1, CL", 0.1)):
            found.append((label + suffix, tau, True, {}, False, option))
        baseline = "CondLR τ=0.1, CL" + (", graph" if "graph" in option else "")
        ratios.append(("CondLR τ=0.1, CL" + suffix, baseline))
    if graphs and reduce_overhead:  # the two ways to one launch per step, side by side
        ratios += [
            (f"{label}, reduce-overhead", f"{label}, graph")
            for label in ("dense SGD, CL", "low-rank τ=inf, CL", "CondLR τ=0.1, CL")
        ]
    return found, ratios


def make(
    model_name: str,
    tau: float | None,
    channels_last: bool,
    path: dict,
    compiled: bool,
    device: torch.device,
    capturable: bool = False,
):
    """(model, optimizer); with ``compiled`` the model is torch.compile'd (inductor; the
    optimizer step stays eager); ``capturable``: CondLR reads its hyperparameters from device
    tensors, as under the engine's captured step."""
    channels, size = SHAPES[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, channels, 10, size)
    if tau is not None:
        to_low_rank(model, rank_fraction=0.2)
    model.to(device)
    if channels_last:
        use_channels_last(model)
    if tau is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.45)
    else:
        optimizer = CondLR(model, lr=0.05, momentum=0.45, tau=tau, capturable=capturable, **path)
    return (torch.compile(model) if compiled else model), optimizer


def step(model, optimizer, x, y, bf16: bool = False) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    optimizer.step()


def captured(model, optimizer, x, y, bf16: bool, warmup: int = 3):
    """A function replaying forward, backward and step of (model, optimizer) on the static
    batch (x, y), captured once as a CUDA graph after ``warmup`` steps on a side stream (which
    allocate momentum buffers and the optimizer's batches outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step(model, optimizer, x, y, bf16)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        with torch.autocast("cuda", torch.bfloat16, enabled=bf16, cache_enabled=False):  # no cache in a capture
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()
    return graph.replay


def compiled_step(model, optimizer, x, y, bf16: bool):
    """forward, backward and step of (model, optimizer) on (x, y) as one function compiled by
    ``torch.compile(mode="reduce-overhead")`` (inductor, its kernels replayed as CUDA graphs);
    its compilation runs in the warm-up steps."""
    return torch.compile(lambda: step(model, optimizer, x, y, bf16), mode="reduce-overhead")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,vgg16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also CondLR τ=0.1 with the model torch.compile'd (its compilation runs in the warm-up)",
    )
    parser.add_argument("--bf16", action="store_true", help="also CL variants under autocast to bfloat16")
    parser.add_argument("--graphs", action="store_true", help="also CL variants captured as CUDA graphs (CUDA only)")
    parser.add_argument(
        "--reduce-overhead",
        action="store_true",
        help='also CL variants with the whole step compiled by torch.compile(mode="reduce-overhead")',
    )
    parser.add_argument(
        "--forwards",
        action="store_true",
        help="also low-rank CL variants with every layer composed, and with each layer's forward chosen by timing",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.graphs and device.type != "cuda":
        parser.error(f"--graphs needs --device cuda (got --device {args.device})")
    if args.threads:
        torch.set_num_threads(args.threads)
    found, ratios = variants(device, args.compile, args.bf16, args.graphs, args.reduce_overhead, args.forwards)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for model_name in args.models.split(","):
        channels, size = SHAPES[model_name]
        x = torch.rand(args.batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        runners = {}
        for label, tau, cl, path, compiled, option in found:
            whole_step = "graph" in option or "reduce-overhead" in option
            model, optimizer = make(model_name, tau, cl, path, compiled, device, capturable=whole_step)
            bf16 = "bf16" in option
            if "composed" in option:
                for _, layer in low_rank_layers(model):
                    layer.set_forward_mode("composed")
            if "tuned" in option:
                # timed as the step runs: replayed from a graph, or eagerly (as the engine does)
                measure = graphed_median_seconds if "graph" in option else median_seconds
                choices = ForwardTuner(measure).tune(model, x, torch.bfloat16 if bf16 else None)
                print(f"  {model_name}, {label}: " + ", ".join(choice.describe() for choice in choices))
            if "graph" in option:
                runners[label] = captured(model, optimizer, x, y, bf16)
            elif "reduce-overhead" in option:
                runners[label] = compiled_step(model, optimizer, x, y, bf16)
            else:
                runners[label] = lambda m=model, o=optimizer, b=bf16, x=x, y=y: step(m, o, x, y, b)
        times: dict[str, list[float]] = {label: [] for label, *_ in found}
        for _ in range(args.warmup):
            for run in runners.values():
                run()
        for _ in range(args.repeats):
            for label, run in runners.items():
                sync(device)
                start = time.perf_counter()
                run()
                sync(device)
                times[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(t) for label, t in times.items()}
        dense = medians["dense SGD"]
        best_dense = min(dense, medians["dense SGD, CL"])
        print(
            f"\n{model_name} ({channels}×{size}×{size}), rank_fraction 0.2, median of {args.repeats} "
            f"(CL: channels_last = true):"
        )
        print(f"  {'variant':<40} {'ms/step':>9} {'× dense':>8} {'× best dense':>13}")
        for label, median in medians.items():
            print(f"  {label:<40} {1000 * median:>9.1f} {median / dense:>8.2f} {median / best_dense:>13.2f}")
        for label, base in ratios:
            print(f"  {label} / {base}: {medians[label] / medians[base]:.3f}")


if __name__ == "__main__":
    main()
