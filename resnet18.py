"""ResNet18 for 32x32 CIFAR-10 images (a 3x3 stem, no max-pool)."""
import os

import numpy as np
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        """Two 3x3 convolutions with batch norm and a residual connection.

        Args:
            in_planes: input channels.
            planes: output channels.
            stride: stride of the first convolution (and of the projection shortcut).
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        # x [batch, in_planes, H, W] -> [batch, planes, H / stride, W / stride]
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes=10):
        """ResNet18: a 3x3 stem, four stages of two ``BasicBlock`` each, global pooling, a linear head.

        Args:
            num_classes: number of output logits.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, 64, 1)
        self.layer2 = self._make_layer(64, 128, 2)
        self.layer3 = self._make_layer(128, 256, 2)
        self.layer4 = self._make_layer(256, 512, 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, in_planes, planes, stride):
        layers = [
            BasicBlock(in_planes, planes, stride),
            BasicBlock(planes, planes, 1),
        ]
        return nn.Sequential(*layers)

    def forward(self, images):
        """
        Args:
            images: ``[batch, 3, 32, 32]``.

        Returns:
            logits ``[batch, num_classes]``.
        """
        out = F.relu(self.bn1(self.conv1(images)))  # [B, 64, 32, 32]
        out = self.layer1(out)                      # [B, 64, 32, 32]
        out = self.layer2(out)                      # [B, 128, 16, 16]
        out = self.layer3(out)                      # [B, 256, 8, 8]
        out = self.layer4(out)                      # [B, 512, 4, 4]
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # [B, 512]
        return self.linear(out)

    def visualize(self, logdir):
        """Save the 64 first-layer 3x3 kernels as an 8x8 grid, in colour and channel-averaged.

        Each kernel is min-max normalised on its own, so its pattern is visible whatever its scale.
        Writes ``resnet18_kernels_rgb.png`` and ``resnet18_kernels_gray.png`` into ``logdir``.

        Returns:
            the paths of the two files.
        """
        from matplotlib.figure import Figure

        os.makedirs(logdir, exist_ok=True)
        kernels = self.conv1.weight.detach().float().cpu()  # [64, 3, 3, 3]
        rgb = _normalise_each(kernels.permute(0, 2, 3, 1).numpy())  # [64, 3, 3, 3] (kernel, row, col, rgb)
        gray = _normalise_each(kernels.mean(dim=1).numpy())       # [64, 3, 3]
        paths = []
        for name, images, cmap, title in (
            ("resnet18_kernels_rgb.png", rgb, None, "ResNet18 first-layer kernels (RGB, each normalised)"),
            ("resnet18_kernels_gray.png", gray, "gray", "ResNet18 first-layer kernels (channel mean, each normalised)"),
        ):
            columns = 8
            rows = int(np.ceil(len(images) / columns))
            fig = Figure(figsize=(columns * 0.9, rows * 0.9 + 0.5))
            axes = fig.subplots(rows, columns, squeeze=False)
            for index, ax in enumerate(axes.flat):
                ax.set_axis_off()
                if index < len(images):
                    ax.imshow(images[index], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, wspace=0.08, hspace=0.08)
            fig.suptitle(title, fontsize=9)
            path = os.path.join(logdir, name)
            fig.savefig(path, dpi=100)
            paths.append(path)
        return paths


def _normalise_each(images):
    """Min-max normalise every image of a stack ``[N, ...]`` to [0, 1] independently."""
    flat = images.reshape(len(images), -1)
    low = flat.min(axis=1, keepdims=True)
    span = np.maximum(flat.max(axis=1, keepdims=True) - low, 1e-12)
    return ((flat - low) / span).reshape(images.shape)
