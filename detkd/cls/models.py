"""Image classifiers that expose their stage feature maps.

Every network built here has the same interface:

* ``forward(x)`` -> logits ``[B, num_classes]``;
* ``forward(x, return_features=True)`` -> ``(logits, [F_1, ..., F_L])``, the output of each
  stage (shallow -> deep, after its last activation); ``F_L`` is the last map before
  global pooling;
* ``classifier_from_features(F_L)`` -> logits: the network's own global average pool and
  linear classifier (CA-MKD pushes the student's regressed map through each teacher's);
* ``feature_channels``: the channel count of each stage.

Two families:

* CIFAR-style ResNets (He et al. 2016, section 4.2): ``resnet8/14/20/32/44/56/110`` with
  depth 6n + 2, three stages of n basic blocks at ``width``, ``2 width``, ``4 width``
  channels (``width`` = 16 is the paper's; ``width`` = 64 gives the "resnet8x4"-style
  wide variants of the distillation literature). A 1x1 conv + BN shortcut where the shape
  changes.
* torchvision ``resnet18/34/50`` and ``mobilenet_v2`` built with ``num_classes`` (no
  pretrained weights); ``stem="cifar"`` replaces the ImageNet stem by a stride-1 3x3 conv
  (and drops the ResNet max-pool) for 32x32 inputs, ``stem="imagenet"`` keeps it. The
  first conv is rebuilt for ``in_channels`` != 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.errors import DetkdError

CIFAR_RESNET_DEPTHS = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32, "resnet44": 44,
                       "resnet56": 56, "resnet110": 110}
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
ARCHS = (*CIFAR_RESNET_DEPTHS, *TORCHVISION_ARCHS)


class _FeatureNet(nn.Module):
    """Shared forward: stem -> stages -> pool -> classifier."""

    stem: nn.Module
    stages: nn.ModuleList
    fc: nn.Module
    feature_channels: list[int]

    def forward(self, x: Tensor, return_features: bool = False):
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        logits = self.classifier_from_features(x)
        return (logits, feats) if return_features else logits

    def classifier_from_features(self, feat: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(feat, 1).flatten(1))


# ------------------------------------------------------------------------ CIFAR ResNets


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(_FeatureNet):
    """ResNet-(6n+2) for 32x32 inputs: 3 stages of n basic blocks, widths w, 2w, 4w."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 >= 8, got {depth}")
        n = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, c_in = [], width
        for i, c in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c_in, c, 2 if (b == 0 and i > 0) else 1))
                c_in = c
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feature_channels = widths
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------ torchvision


def _replace_conv(conv: nn.Conv2d, in_channels: int, kernel: int | None = None, stride: int | None = None) -> nn.Conv2d:
    k = kernel if kernel is not None else conv.kernel_size[0]
    s = stride if stride is not None else conv.stride[0]
    new = nn.Conv2d(in_channels, conv.out_channels, k, s, k // 2, bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new


class TorchvisionResNet(_FeatureNet):
    """torchvision ResNet split into stem + layer1..4 (the four stage maps)."""

    def __init__(self, arch: str, num_classes: int, in_channels: int = 3, stem: str = "cifar") -> None:
        super().__init__()
        import torchvision.models as tvm

        net = getattr(tvm, arch)(weights=None, num_classes=num_classes)
        if stem == "cifar":
            net.conv1 = _replace_conv(net.conv1, in_channels, kernel=3, stride=1)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = _replace_conv(net.conv1, in_channels)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.fc = net.fc
        self.feature_channels = [self._out_channels(s) for s in self.stages]

    @staticmethod
    def _out_channels(stage: nn.Module) -> int:
        return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


class TorchvisionMobileNetV2(_FeatureNet):
    """torchvision MobileNetV2; stages end at the blocks before each stride-2 block
    (features[0:4], [4:7], [7:14], [14:19], the last including the 1x1 conv to 1280)."""

    _SPLITS = ((0, 4), (4, 7), (7, 14), (14, 19))

    def __init__(self, num_classes: int, in_channels: int = 3, stem: str = "cifar") -> None:
        super().__init__()
        import torchvision.models as tvm

        net = tvm.mobilenet_v2(weights=None, num_classes=num_classes)
        first = net.features[0][0]
        if stem == "cifar" or in_channels != 3:
            net.features[0][0] = _replace_conv(first, in_channels, stride=1 if stem == "cifar" else 2)
        self.stem = nn.Identity()
        self.stages = nn.ModuleList([nn.Sequential(*net.features[a:b]) for a, b in self._SPLITS])
        self.fc = net.classifier
        self.feature_channels = [
            [m for m in s.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features for s in self.stages]


# ------------------------------------------------------------------------ builder


def build_net(arch: str, num_classes: int, in_channels: int = 3, width: int | None = None,
              stem: str = "cifar") -> _FeatureNet:
    """Build one classifier by name (see the module docstring)."""
    if arch in CIFAR_RESNET_DEPTHS:
        width = 16 if width is None else width
        if width < 1:
            raise DetkdError(f"width must be >= 1 for {arch}, got {width}")
        return CifarResNet(CIFAR_RESNET_DEPTHS[arch], num_classes, in_channels, width)
    if width is not None:
        raise DetkdError(f"'width' applies to the CIFAR ResNets only, not to torchvision's {arch}")
    if arch in ("resnet18", "resnet34", "resnet50"):
        return TorchvisionResNet(arch, num_classes, in_channels, stem)
    if arch == "mobilenet_v2":
        return TorchvisionMobileNetV2(num_classes, in_channels, stem)
    raise DetkdError(f"unknown classifier arch '{arch}'; choose one of {', '.join(ARCHS)}")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def feature_shapes(net: nn.Module, in_channels: int, size: int) -> list[tuple[int, int, int]]:
    """(C, H, W) of every stage map for a ``size`` x ``size`` input (BN statistics untouched)."""
    was_training = net.training
    net.eval()
    try:
        _, feats = net(torch.zeros(2, in_channels, size, size, device=next(net.parameters()).device),
                       return_features=True)
    finally:
        net.train(was_training)
    return [tuple(int(v) for v in f.shape[1:]) for f in feats]
