"""An example factory for `model = "my_cnn.py:build"`: rlr imports this file and calls
``build(**model_args)``; whatever it returns (an nn.Module taking images, returning one score per
class) is the model. Put your own network here, or point `model` at your own file or module.

The model gets [0, 1] pixels: rlr adds the input normalisation (mean and std) itself.
"""

from collections import OrderedDict

from torch import nn


def build(num_classes: int = 10, width: int = 32, in_channels: int = 3) -> nn.Module:
    """Three 3×3 convolutions (the last two with stride 2), global average pooling and two
    linear layers; the layer names (conv1, fc1, …) are what lowrank_include/exclude match."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, width, 3, padding=1)),
                ("bn1", nn.BatchNorm2d(width)),
                ("act1", nn.ReLU()),
                ("conv2", nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)),
                ("bn2", nn.BatchNorm2d(2 * width)),
                ("act2", nn.ReLU()),
                ("conv3", nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1)),
                ("bn3", nn.BatchNorm2d(4 * width)),
                ("act3", nn.ReLU()),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(4 * width, 128)),
                ("act4", nn.ReLU()),
                ("fc2", nn.Linear(128, num_classes)),
            ]
        )
    )
