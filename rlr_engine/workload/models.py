"""The networks of the reference setup, each taking images in [0, 1] pixel space.

Input normalisation is the model's first module, so attacks perturb and clip raw pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from rlr_engine.core.catalog import MODEL_INPUTS
from rlr_engine.method.lowrank import LowRankConv2d


class Normalize(nn.Module):
    """(x − mean) / std per channel, as a layer."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def named_sequential(layers: list[tuple[str, nn.Module]]) -> nn.Sequential:
    """A Sequential whose layers have readable names (conv1, fc2, ...) in state dicts, events
    and the dashboard."""
    return nn.Sequential(OrderedDict(layers))


def _normalizer(mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    return Normalize(mean, std) if mean is not None and std is not None else nn.Identity()


def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, mean=None, std=None) -> nn.Sequential:
    """conv(c→20, 5) LeakyReLU maxpool2, conv(20→50, 5) LeakyReLU maxpool2,
    linear(50·4·4 → 500) LeakyReLU, linear(500 → classes)."""
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"lenet5 needs images of at least 16 pixels, got {image_size}")
    return named_sequential(
        [
            ("normalize", _normalizer(mean, std)),
            ("conv1", nn.Conv2d(in_channels, 20, 5)),
            ("act1", nn.LeakyReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(20, 50, 5)),
            ("act2", nn.LeakyReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(50 * side * side, 500)),
            ("act3", nn.LeakyReLU()),
            ("fc2", nn.Linear(500, num_classes)),
        ]
    )


VGG16_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def vgg16(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, mean=None, std=None) -> nn.Sequential:
    """CIFAR VGG16: 13 conv3×3 (+BatchNorm, LeakyReLU), 5 maxpools, dropout 0.2, then
    linear 512→512→512→classes."""
    if image_size != 32:
        raise ValueError(f"vgg16 expects 32×32 images, got {image_size}")
    layers: list[tuple[str, nn.Module]] = [("normalize", _normalizer(mean, std))]
    channels, conv, pool = in_channels, 0, 0
    for item in VGG16_LAYOUT:
        if isinstance(item, str):  # "M": a 2×2 max pool
            pool += 1
            layers.append((f"pool{pool}", nn.MaxPool2d(2)))
        else:
            conv += 1
            layers += [
                (f"conv{conv}", nn.Conv2d(channels, item, 3, padding=1)),
                (f"bn{conv}", nn.BatchNorm2d(item)),
                (f"act{conv}", nn.LeakyReLU()),
            ]
            channels = item
    layers += [
        ("flatten", nn.Flatten()),
        ("dropout", nn.Dropout(0.2)),
        ("fc1", nn.Linear(512, 512)),
        ("act14", nn.LeakyReLU()),
        ("fc2", nn.Linear(512, 512)),
        ("act15", nn.LeakyReLU()),
        ("fc3", nn.Linear(512, num_classes)),
    ]
    return named_sequential(layers)


class WideBasicBlock(nn.Module):
    """Pre-activation wide residual block: BN-ReLU-conv3×3-BN-ReLU-conv3×3, plus the shortcut
    (identity, or a 1×1 conv when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.act = nn.ReLU()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act(self.bn1(x))
        out = self.conv2(self.act(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis): three groups of (depth − 4)/6 blocks with widths
    16k, 32k, 64k, global average pooling and a linear classifier."""

    def __init__(
        self, depth: int = 16, widen: int = 4, in_channels: int = 3, num_classes: int = 10, mean=None, std=None
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.normalize = _normalizer(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        groups, planes = [], widths[0]
        for _i, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            group = [WideBasicBlock(planes if j == 0 else width, width, stride if j == 0 else 1) for j in range(blocks)]
            groups.append(nn.Sequential(*group))
            planes = width
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(planes)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.groups(self.conv1(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(self.act(self.bn(h))), 1))


def wrn16_4(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, mean=None, std=None) -> WideResNet:
    return WideResNet(16, 4, in_channels, num_classes, mean, std)


def digits_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 8, mean=None, std=None) -> nn.Sequential:
    """A small CNN for 8×8 digits: conv(c→32, 3) conv(32→64, 3) maxpool2, linear → 128 → classes."""
    side = image_size // 2
    return named_sequential(
        [
            ("normalize", _normalizer(mean, std)),
            ("conv1", nn.Conv2d(in_channels, 32, 3, padding=1)),
            ("act1", nn.LeakyReLU()),
            ("conv2", nn.Conv2d(32, 64, 3, padding=1)),
            ("act2", nn.LeakyReLU()),
            ("pool", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(64 * side * side, 128)),
            ("act3", nn.LeakyReLU()),
            ("fc2", nn.Linear(128, num_classes)),
        ]
    )


def mlp(in_channels: int = 1, num_classes: int = 10, image_size: int = 8, mean=None, std=None) -> nn.Sequential:
    """Flatten, linear → 256 → 128 → classes with LeakyReLU."""
    return named_sequential(
        [
            ("normalize", _normalizer(mean, std)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(in_channels * image_size * image_size, 256)),
            ("act1", nn.LeakyReLU()),
            ("fc2", nn.Linear(256, 128)),
            ("act2", nn.LeakyReLU()),
            ("fc3", nn.Linear(128, num_classes)),
        ]
    )


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])


def use_channels_last(model: nn.Module) -> nn.Module:
    """Run the model channels-last: its 4-D weights, the kernels its low-rank convolutions build
    (call it after ``to_low_rank``) and, through a forward pre-hook, its input.

    Callers (attacks above all) keep passing contiguous float32 images; the layout changes
    inside the forward, so advertorch's attacks, which break on channels-last inputs, never see
    one. State-dict keys are unchanged."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, LowRankConv2d):
            module.memory_format = torch.channels_last
    model.register_forward_pre_hook(_to_channels_last)
    return model


def compile_model(model: nn.Module) -> nn.Module:
    """Compile the model's forward (and so its backward) with torch.compile, in place.

    ``nn.Module.compile`` keeps the module itself (parameters, state-dict keys, hooks), so the
    optimizer, checkpoints and attacks see the same object. A truncation replaces U, S, V by
    new parameters of another shape: the compiled graph then recompiles once."""
    model.compile()
    return model


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "vgg16": vgg16,
    "wrn16-4": wrn16_4,
    "digits-cnn": digits_cnn,
    "mlp": mlp,
}
assert tuple(BUILDERS) == tuple(MODEL_INPUTS), "catalog.MODEL_INPUTS lists the models built here"


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, mean=None, std=None) -> nn.Module:
    """Instantiate a model by name for the given input shape and class count."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODEL_INPUTS)}")
    return BUILDERS[name](in_channels=in_channels, num_classes=num_classes, image_size=image_size, mean=mean, std=std)
