"""The PyTorch MNIST example network: the reference CNN baseline."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from attngraft.models.factory import register_model


def mnist_features(in_chans: int) -> nn.Sequential:
    """The example's convolutions: 3×3 conv 32, ReLU, 3×3 conv 64, ReLU, 2×2 max-pool.

    Shape: (B, in_chans, H, W) → (B, 64, (H − 4) / 2, (W − 4) / 2).
    """
    return nn.Sequential(nn.Conv2d(in_chans, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2))


class MnistCNN(nn.Module):
    """Conv 32 → conv 64 → 2×2 max-pool → dropout 0.25 → FC 128 → dropout 0.5 → FC (logits, no log-softmax).

    Args:
        num_classes: Classifier outputs.
        in_chans: Input channels.
        img_size: Input side (fixes the first FC's width: 9,216 for 28×28).

    Shape:
        - Input: (B, in_chans, img_size, img_size).
        - Output: (B, num_classes).
    """

    def __init__(self, *, num_classes: int, in_chans: int, img_size: int = 28) -> None:
        super().__init__()
        side = (img_size - 4) // 2
        self.features = mnist_features(in_chans)
        self.classifier = nn.Sequential(
            nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Dropout(0.5)
        )
        self.num_features = 128
        self.head = nn.Linear(128, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → the 64-channel map (B, 64, (H − 4) / 2, (W − 4) / 2)."""
        return self.features(x)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(self.features(x)))


@register_model("mnist_cnn", family="cnn", num_classes=10, in_chans=1, image_size=28)
def mnist_cnn(**options: int) -> MnistCNN:
    """The PyTorch MNIST example CNN."""
    return MnistCNN(**options)
