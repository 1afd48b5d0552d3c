"""Pieces shared by the transformer models."""

from __future__ import annotations

from timm.layers import trunc_normal_
from torch import nn


def init_linear_layers(model: nn.Module) -> None:
    """ViT-style initialisation of every ``nn.Linear``: truncated normal (std 0.02) weights, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
