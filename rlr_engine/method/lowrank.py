"""Low-rank layers W = U S Vᵀ and the conversion of dense models to them.

U ∈ R^{m×r} and V ∈ R^{n×r} have orthonormal columns, S ∈ R^{r×r} is a small core.
For a convolution W is the weight reshaped to (c_out, c_in·kh·kw), so κ(W) = κ(S).

The forward has two forms of the same map (``forward_mode``): "factored", through the rank-r
intermediate (x Vᵀ, then U S: r(m + n) multiply-adds per output position instead of mn), and
"composed", W = (U S) Vᵀ formed once per call and one dense linear map or convolution (one large
kernel instead of two smaller ones, which wins where kernel launches cost more than FLOPs).
Autograd differentiates either to the same gradients of U, S and V up to rounding.

Storage is allocated at a maximum rank R ≥ r: the parameters are U (m×R), S (R×R), V (n×R)
and only the leading block U[:, :r], S[:r, :r], V[:, :r] is live (``live_factors``). The live
rank r is a buffer in the state dict, so rank-adaptive training changes r without replacing
parameter objects (optimizers and DistributedDataParallel keep valid references). The dead
part of S is kept zero. With R = r (the default) the layer is exactly the plain factorisation.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlr_engine.core.catalog import LOW_RANK_FORWARDS


class LowRankLayer(nn.Module):
    """Common storage of a factorised weight W = U S Vᵀ (m×n) plus an optional bias.

    Parameters ``U`` (m×R), ``S`` (R×R), ``V`` (n×R) at the maximum rank R; the live rank r ≤ R
    is the buffer ``live_rank`` (mirrored in a Python int so reading it never synchronises with
    an accelerator). The buffer ``init_sigma_mean`` holds the mean of *all* singular values of
    the dense weight the layer was built from; the reference step scaling at τ = 0 divides by it.
    ``forward_mode`` is "factored" (the default) or "composed" (module docstring).
    """

    U: nn.Parameter
    S: nn.Parameter
    V: nn.Parameter
    bias: nn.Parameter | None
    init_sigma_mean: Tensor
    live_rank: Tensor

    def _init_factors(self, m: int, n: int, rank: int, bias: bool, device, dtype, max_rank: int | None = None) -> None:
        self.out_dim, self.in_dim = m, n
        full = self.full_rank
        if not 1 <= rank <= full:
            raise ValueError(f"rank must be in [1, {full}] for a {m}×{n} weight, got {rank}")
        max_rank = rank if max_rank is None else max_rank
        if not rank <= max_rank <= full:
            raise ValueError(
                f"max_rank must be in [{rank}, {full}] (rank to full rank) for a {m}×{n} weight, got {max_rank}"
            )
        kw = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.empty(m, max_rank, **kw))
        self.S = nn.Parameter(torch.empty(max_rank, max_rank, **kw))
        self.V = nn.Parameter(torch.empty(n, max_rank, **kw))
        self.bias = nn.Parameter(torch.empty(m, **kw)) if bias else None
        self.register_buffer("init_sigma_mean", torch.ones((), **kw))
        self.register_buffer("live_rank", torch.tensor(rank, dtype=torch.long, device=device))
        self._rank = rank
        self.forward_mode = "factored"

    def set_forward_mode(self, mode: str) -> None:
        """Compute the output "factored" or "composed" (module docstring). Raises ValueError
        for anything else."""
        if mode not in LOW_RANK_FORWARDS:
            raise ValueError(f"forward_mode must be one of {LOW_RANK_FORWARDS}, got {mode!r}")
        self.forward_mode = mode

    @property
    def rank(self) -> int:
        """The live rank r."""
        return self._rank

    @property
    def max_rank(self) -> int:
        """The rank the storage is allocated at (R)."""
        return self.S.shape[0]

    @property
    def full_rank(self) -> int:
        """min(m, n): the rank of a dense m×n weight."""
        return min(self.out_dim, self.in_dim)

    def set_live_rank(self, rank: int) -> None:
        """Make the leading r columns live. The caller keeps the factors consistent (the dead
        part of S zero); rank-adaptive training does this in ``rlr_engine.method.adaptive``."""
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"live rank must be in [1, {self.max_rank}] (the allocated rank), got {rank}")
        self._rank = int(rank)
        self.live_rank.fill_(self._rank)

    def live_factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """(U[:, :r], S[:r, :r], V[:, :r]): views of the live block (the parameters themselves
        when r = R, so a layer without spare storage costs exactly what it did before)."""
        r = self._rank
        if r == self.max_rank:
            return self.U, self.S, self.V
        return self.U[:, :r], self.S[:r, :r], self.V[:, :r]

    def dense_weight_matrix(self) -> Tensor:
        """W = U S Vᵀ as an m×n matrix (live block only)."""
        U, S, V = self.live_factors()
        return U @ S @ V.T

    @torch.no_grad()
    def set_from_dense(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Initialise from the truncated SVD of a dense m×n weight: U, V its leading R singular
        vectors, S = diag(σ_1..σ_r, 0, …, 0) (the live block is the best rank-r approximation,
        the dead part of S is zero). Also records mean(σ) over the whole spectrum."""
        matrix = weight.reshape(self.out_dim, self.in_dim).to(self.S)
        P, sigma, Qh = torch.linalg.svd(matrix, full_matrices=False)
        r, R = self.rank, self.max_rank
        self.U.copy_(P[:, :R])
        self.S.zero_()
        self.S[:r, :r].copy_(torch.diag(sigma[:r]))
        self.V.copy_(Qh[:R].T)
        self.init_sigma_mean.copy_(sigma.mean())
        if self.bias is not None:
            if bias is None:
                self.bias.zero_()
            else:
                self.bias.copy_(bias)

    def _storage_repr(self) -> str:
        return "" if self.max_rank == self.rank else f" (allocated {self.max_rank})"

    def parameter_counts(self) -> tuple[int, int]:
        """(live parameters at rank r, parameters of the equivalent dense layer)."""
        r = self.rank
        b = self.out_dim if self.bias is not None else 0
        return self.out_dim * r + r * r + self.in_dim * r + b, self.out_dim * self.in_dim + b

    def resize_rank(self, rank: int) -> dict[str, nn.Parameter]:
        """Replace U, S, V by new parameters allocated at a new rank, all of it live (contents
        undefined), and return the old ones by name. New parameter objects are needed because
        autograd remembers the shape of a leaf; an optimizer holding the old ones must swap them
        (CondLR does). Rank-adaptive training lowers the live rank instead (``set_live_rank``)."""
        old = {}
        for name, shape in (("U", (self.out_dim, rank)), ("S", (rank, rank)), ("V", (self.in_dim, rank))):
            p = getattr(self, name)
            old[name] = p
            setattr(self, name, nn.Parameter(p.detach().new_empty(shape), requires_grad=p.requires_grad))
        self.set_live_rank(rank)
        return old

    @torch.no_grad()
    def release_spare_storage(self) -> None:
        """Reallocate U, S, V at the live rank r, dropping the spare storage that rank-adaptive
        training keeps (W and the live rank unchanged; new parameter objects, so an optimizer
        holding the old ones must not step this layer any more). For exporting a trained model."""
        if self.rank == self.max_rank:
            return
        live = [t.detach().clone() for t in self.live_factors()]
        self.resize_rank(self.rank)
        for parameter, value in zip((self.U, self.S, self.V), live):
            parameter.copy_(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint of a truncated layer has smaller factors: adopt its allocated rank
        first, then its live rank (checkpoints written before the live rank existed have all
        of their storage live)."""
        key = prefix + "S"
        if key in state_dict:
            if state_dict[key].shape != self.S.shape:
                self.resize_rank(state_dict[key].shape[0])
            state_dict.setdefault(prefix + "live_rank", torch.tensor(state_dict[key].shape[0]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._rank = int(self.live_rank)


class LowRankLinear(LowRankLayer):
    """y = x V Sᵀ Uᵀ + b, i.e. a linear layer with weight W = U S Vᵀ (out × in)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device=None,
        dtype=None,
        max_rank: int | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_factors(out_features, in_features, rank, bias, device, dtype, max_rank)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same distribution as nn.Linear's weight, then factorised by SVD."""
        w = torch.empty(self.out_features, self.in_features, device=self.S.device, dtype=self.S.dtype)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        b = None
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            b = torch.empty(self.out_features, device=w.device, dtype=w.dtype).uniform_(-bound, bound)
        self.set_from_dense(w, b)

    def dense_weight(self) -> Tensor:
        return self.dense_weight_matrix()

    def forward(self, x: Tensor) -> Tensor:
        U, S, V = self.live_factors()
        if self.forward_mode == "composed":
            return F.linear(x, (U @ S) @ V.T, self.bias)
        return F.linear(F.linear(x, V.T), U @ S, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}/{self.full_rank}{self._storage_repr()}, bias={self.bias is not None}"
        )


class LowRankConv2d(LowRankLayer):
    """A Conv2d whose weight (c_out, c_in·kh·kw) is U S Vᵀ, computed factored as two convolutions,
    conv(x, Vᵀ as r×c_in×kh×kw, stride, padding, dilation) then a 1×1 conv with U S (+ bias), or
    composed as one convolution with (U S) Vᵀ reshaped to c_out×c_in×kh×kw (``forward_mode``).

    ``memory_format`` is the layout of the two kernels built in the forward (channels-last after
    ``models.use_channels_last``). A convolution's output follows its input's or its kernel's
    layout; the kernels are built from 2-D factors, which ``model.to(memory_format=...)`` does
    not touch, and an input with one channel is both layouts at once, so the layer has to be
    told. Without it the first layer of a channels-last LeNet5 returned NCHW, and the max-pool
    after it ran ~10× slower on the CPU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        rank: int,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        device=None,
        dtype=None,
        max_rank: int | None = None,
    ) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = pair(kernel_size), pair(stride), pair(dilation)
        self.padding = padding if isinstance(padding, str) else pair(padding)
        kh, kw = self.kernel_size
        self.memory_format = torch.contiguous_format
        self._init_factors(out_channels, in_channels * kh * kw, rank, bias, device, dtype, max_rank)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same distribution as nn.Conv2d's weight, then factorised by SVD."""
        kh, kw = self.kernel_size
        w = torch.empty(self.out_channels, self.in_channels, kh, kw, device=self.S.device, dtype=self.S.dtype)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        b = None
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * kh * kw)
            b = torch.empty(self.out_channels, device=w.device, dtype=w.dtype).uniform_(-bound, bound)
        self.set_from_dense(w, b)

    def dense_weight(self) -> Tensor:
        return self.dense_weight_matrix().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        U, S, V = self.live_factors()
        if self.forward_mode == "composed":
            shape = (self.out_channels, self.in_channels, *self.kernel_size)
            weight = ((U @ S) @ V.T).reshape(shape).contiguous(memory_format=self.memory_format)
            return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)
        r = self.rank
        basis = V.T.reshape(r, self.in_channels, *self.kernel_size).contiguous(memory_format=self.memory_format)
        z = F.conv2d(x, basis, None, self.stride, self.padding, self.dilation)
        mix = (U @ S).reshape(self.out_channels, r, 1, 1).contiguous(memory_format=self.memory_format)
        return F.conv2d(z, mix, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"rank={self.rank}/{self.full_rank}{self._storage_repr()}, bias={self.bias is not None}"
        )


def low_rank_layers(model: nn.Module) -> Iterator[tuple[str, LowRankLayer]]:
    """(qualified name, layer) for every low-rank layer of a model, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, LowRankLayer):
            yield name, module


def full_rank_of(module: nn.Module) -> int:
    """min(m, n) of a Linear's weight or a Conv2d's weight reshaped to (c_out, c_in·kh·kw)."""
    if isinstance(module, LowRankLayer):
        return module.full_rank
    weight = module.weight
    assert isinstance(weight, Tensor), f"{type(module).__name__} has no weight tensor"
    return min(weight.shape[0], weight[0].numel())


def _convertible(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def _why_not_convertible(module: nn.Module) -> str:
    if module.groups != 1:
        return f"a grouped convolution (groups = {module.groups}) has no single weight matrix to factorise"
    return f"padding_mode = {module.padding_mode!r} (only zero padding is factorised)"


def rank_for_fraction(rank_fraction: float, full_rank: int) -> int:
    """r = ceil(rank_fraction · full_rank), at least 1."""
    return max(1, min(full_rank, math.ceil(rank_fraction * full_rank - 1e-9)))


def rank_for_energy(sigma: Tensor, energy: float) -> int:
    """The fewest leading singular values holding ``energy`` of the squared Frobenius norm:
    the smallest r with σ_1² + … + σ_r² ≥ energy · Σ σ_i² (σ in descending order), at least 1.
    Summed in float64, so energy = 1 keeps every σ that adds anything a float64 sum can hold."""
    squares = sigma.detach().double().square()
    kept = torch.cumsum(squares, 0)
    if kept.numel() == 0 or kept[-1] <= 0:
        return 1
    r = int(torch.searchsorted(kept, energy * kept[-1])) + 1
    return max(1, min(r, sigma.numel()))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _select(
    model: nn.Module, include: Sequence[str], exclude: Sequence[str], ranks: Mapping[str, int]
) -> tuple[list[tuple[str, nn.Linear | nn.Conv2d]], str | None]:
    """The Linear / Conv2d modules to convert (patterns applied, explicit ranks added) and the
    name of the last convertible one; ValueError for a pattern that matches nothing or a layer
    that an include pattern names but cannot be factorised."""
    layers: list[tuple[str, nn.Linear | nn.Conv2d]] = [
        (n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    names = [n for n, _ in layers]
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
                raise ValueError(
                    f"{kind} pattern {pattern!r} matches no Linear or Conv2d module (they are: {shown or 'none'})"
                )
    known = {n for n, m in layers if _convertible(m)}
    unknown = sorted(set(ranks) - known)
    if unknown:
        raise ValueError(f"ranks names unknown layers {unknown}; convertible layers are {sorted(known)}")
    chosen: list[tuple[str, nn.Linear | nn.Conv2d]] = []
    for name, module in layers:
        wanted = name in ranks or ((not include or _matches(name, include)) and not _matches(name, exclude))
        if not wanted:
            continue
        if not _convertible(module):
            if include:
                raise ValueError(f"layer {name!r} cannot be made low-rank: {_why_not_convertible(module)}; exclude it")
            continue
        chosen.append((name, module))
    convertible = [n for n, m in layers if _convertible(m)]
    return chosen, (convertible[-1] if convertible else None)


def to_low_rank(
    model: nn.Module,
    rank_fraction: float = 1.0,
    ranks: Mapping[str, int] | None = None,
    skip_last: bool = True,
    max_rank_fraction: float | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    rank_energy: float | None = None,
) -> nn.Module:
    """Replace nn.Linear / nn.Conv2d modules in place by their low-rank versions initialised from
    the truncated SVD of their dense weights (stride, padding, dilation and bias kept), and
    return the model.

    Which layers: every Linear and every Conv2d with groups = 1 and zero padding, or those whose
    qualified names (``layer3.0.conv1``) match a glob pattern of ``include``, less those matching
    one of ``exclude``; the last convertible layer (the classifier) stays dense when
    ``skip_last``. Which rank r for an m×n weight (a convolution's reshaped to c_out ×
    c_in·kh·kw): ``ranks[name]`` if given; else with ``rank_energy`` the fewest singular values
    holding that fraction of ‖W‖²_F (``rank_for_energy``); else r = ⌈rank_fraction·min(m, n)⌉,
    so "80 % of the rank removed" is rank_fraction = 0.2.

    Args:
        model: the network, changed in place (its converted modules are replaced).
        rank_fraction: fraction of each layer's full rank kept, in (0, 1]: r = ⌈fraction·min(m, n)⌉.
        ranks: explicit ranks by module name, overriding the fraction and the energy (a layer
            named here is converted even if it is the last or no pattern selects it).
        skip_last: leave the last convertible layer (in registration order: the classifier) dense.
        max_rank_fraction: storage for rank-adaptive training, R = max(r, ⌈fraction·min(m, n)⌉)
            (a layer given an explicit rank is allocated at that rank); None allocates exactly r.
        include: glob patterns (fnmatch, case-sensitive) of module names to convert; empty:
            every convertible layer. A pattern that matches no Linear or Conv2d, or a layer it
            selects that cannot be factorised (groups > 1, padding other than zeros), is a
            ValueError naming it.
        exclude: glob patterns of module names to leave dense; one that matches no Linear or
            Conv2d is a ValueError.
        rank_energy: in (0, 1]: the energy each layer keeps; None (or 0) ranks by rank_fraction.

    Returns:
        The same model.
    """
    if not 0.0 < rank_fraction <= 1.0:
        raise ValueError(f"rank_fraction must be in (0, 1], got {rank_fraction!r}")
    if max_rank_fraction is not None and not 0.0 < max_rank_fraction <= 1.0:
        raise ValueError(f"max_rank_fraction must be in (0, 1], got {max_rank_fraction!r}")
    if rank_energy is not None and not 0.0 <= rank_energy <= 1.0:
        raise ValueError(f"rank_energy must be in [0, 1], got {rank_energy!r}")
    ranks = dict(ranks or {})
    chosen, last_name = _select(model, include, exclude, ranks)
    for name, module in chosen:
        if skip_last and name == last_name and name not in ranks:
            continue
        full = full_rank_of(module)
        if name in ranks:
            rank = ranks[name]
        elif rank_energy:
            rank = rank_for_energy(torch.linalg.svdvals(module.weight.detach().flatten(1).float()), rank_energy)
        else:
            rank = rank_for_fraction(rank_fraction, full)
        if not 1 <= rank <= full:
            raise ValueError(f"rank for layer {name!r} must be in [1, {full}], got {rank}")
        max_rank = rank
        if max_rank_fraction is not None and name not in ranks:
            max_rank = max(rank, rank_for_fraction(max_rank_fraction, full))
        device, dtype = module.weight.device, module.weight.dtype
        bias = module.bias
        has_bias = bias is not None
        new: LowRankLayer
        if isinstance(module, nn.Linear):
            new = LowRankLinear(
                module.in_features, module.out_features, rank, has_bias, device, dtype, max_rank=max_rank
            )
        else:
            new = LowRankConv2d(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                rank,
                module.stride,
                module.padding,
                module.dilation,
                has_bias,
                device,
                dtype,
                max_rank=max_rank,
            )
        new.set_from_dense(module.weight.detach(), bias.detach() if bias is not None else None)
        new.train(module.training)
        _set_submodule(model, name, new)
    return model


@torch.no_grad()
def to_dense(model: nn.Module) -> nn.Module:
    """Replace every low-rank layer in place by the nn.Linear / nn.Conv2d holding its weight
    W = U S Vᵀ (live block) and bias, and return the model: the inverse of ``to_low_rank`` up
    to the truncation it made. The outputs are those of the low-rank model up to rounding; the
    dense layer has m·n weights where the factors had (m + n + r)·r.

    Args:
        model: the network, changed in place.

    Returns:
        The same model.
    """
    for name, layer in list(low_rank_layers(model)):
        bias = layer.bias
        device, dtype = layer.S.device, layer.S.dtype
        dense: nn.Linear | nn.Conv2d
        if isinstance(layer, LowRankConv2d):
            dense = nn.Conv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                bias=bias is not None,
                device=device,
                dtype=dtype,
            )
            dense.weight.copy_(layer.dense_weight())
            dense.weight.data = dense.weight.data.contiguous(memory_format=layer.memory_format)
        else:
            dense = nn.Linear(layer.in_dim, layer.out_dim, bias=bias is not None, device=device, dtype=dtype)
            dense.weight.copy_(layer.dense_weight_matrix())
        if bias is not None and dense.bias is not None:
            dense.bias.copy_(bias)
        dense.train(layer.training)
        _set_submodule(model, name, dense)
    return model


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@dataclass(frozen=True)
class ParameterReport:
    """Parameter counts of a model and of its dense equivalent.

    compression = 1 − params / dense_params (the true parameter compression);
    rank_fraction = Σ r / Σ full rank over the low-rank layers. Low-rank layers count their
    live parameters (rank r), not their spare storage.
    """

    params: int
    dense_params: int
    rank_fraction: float

    @property
    def compression(self) -> float:
        return 1.0 - self.params / self.dense_params if self.dense_params else 0.0


def parameter_report(model: nn.Module) -> ParameterReport:
    """Count the live parameters and those of the same model with every layer dense."""
    params = sum(p.numel() for p in model.parameters())
    kept = full = 0
    dense_params = params
    for _, layer in low_rank_layers(model):
        live, dense_equiv = layer.parameter_counts()
        allocated = sum(p.numel() for p in layer.parameters(recurse=False))
        params += live - allocated
        dense_params += dense_equiv - allocated
        kept += layer.rank
        full += layer.full_rank
    return ParameterReport(params, dense_params, kept / full if full else 1.0)
