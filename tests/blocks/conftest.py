"""Helpers for the block tests: small inputs of each layout and per-block test options."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attngraft.blocks import BLOCKS, Block, create_block

DIM = 32

# Small options so every block runs quickly on tiny inputs; blocks not listed use their defaults.
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "mhsa": {"num_heads": 4},
    "graph": {"num_heads": 4},
    "reattention": {"num_heads": 4},
    "window": {"num_heads": 4, "window_size": 4, "shift_size": 2},
    "local": {"num_heads": 4, "kernel_size": 3},
    "local_stem": {"num_heads": 4, "kernel_size": 3},
    "local_relation": {"kernel_size": 3},
    "se": {"reduction": 4},
    "cbam": {"reduction": 4},
}


def make_block(name: str, **overrides: Any) -> Block:
    torch.manual_seed(0)
    return create_block(name, DIM, **{**SMALL_OPTIONS.get(name, {}), **overrides})


def make_input(block: Block, batch: int = 2, tokens: int = 10, size: tuple[int, int] = (6, 7)) -> torch.Tensor:
    torch.manual_seed(1)
    if block.layout == "tokens":
        return torch.randn(batch, tokens, block.dim)
    return torch.randn(batch, block.dim, *size)


def randomise_parameters(module: torch.nn.Module) -> None:
    """Gives zero-initialised gates and norms random values, so every parameter influences the output."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)


@pytest.fixture(params=BLOCKS.names())
def block_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
