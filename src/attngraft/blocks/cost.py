"""What a block says about its own cost: the analytic entry ``attngraft cost`` tabulates.

A block class sets :attr:`attngraft.blocks.Block.cost_entry` to a :class:`CostEntry`: its title, its cost formula
(attention-matrix entries, forward FLOPs, activations kept for the backward) for one layer on one R×R image, the
options that build it from a :class:`CostConfig`, and what its backward holds. ``attngraft cost`` checks each
formula against the block itself (``attngraft.study.cost``), so a new block with an entry is costed, measured and
checked with nothing to add elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

BYTES_PER_ELEMENT = 4  # fp32
GRADIENTS = "the gradients of the output, the input and the weights"


@dataclass(frozen=True)
class CostConfig:
    """The layer every design is costed with.

    Attributes:
        dim: Channels C.
        heads: Attention heads h (the relation layer's groups).
        patch: ViT patch side p.
        kernel: Local attention's odd kernel side k.
        window: Swin window side w.

    Raises:
        ValueError: On a setting no block accepts, naming it.
    """

    dim: int = 64
    heads: int = 8
    patch: int = 4
    kernel: int = 7
    window: int = 7

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"{name}={value} must be positive")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(
                f"heads={self.heads} must divide dim={self.dim} into an even head dim (local attention splits it "
                "between row and column offsets)"
            )
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel={self.kernel} must be odd (a pixel's window is centred on it)")


@dataclass(frozen=True)
class LayerCost:
    """One layer's cost on one image.

    Attributes:
        entries: Attention-matrix entries (all heads).
        flops: Forward FLOPs of the layer (projections and attention; not norms, softmax or the MLP).
        activations: Elements kept for the backward, parameters excluded.
    """

    entries: int
    flops: int
    activations: int

    @property
    def attention_bytes(self) -> int:
        """Memory of the attention matrices, materialised in fp32."""
        return self.entries * BYTES_PER_ELEMENT

    @property
    def activation_bytes(self) -> int:
        """Memory kept for the backward in fp32."""
        return self.activations * BYTES_PER_ELEMENT


@dataclass(frozen=True)
class CostEntry:
    """A block's analytic cost, as ``attngraft cost`` tabulates and checks it.

    Attributes:
        title: ``config → display name``.
        cost: ``(side, config) → LayerCost`` for one layer on one side×side image (side² pixels or tokens).
        options: ``config → create_block options`` that build the costed block.
        backward: What the backward holds beyond the kept activations (explains the measured peak).
        fused: Whether the block never materialises its attention matrices (a fused kernel recomputes them).
    """

    title: Callable[[CostConfig], str]
    cost: Callable[[int, CostConfig], LayerCost]
    options: Callable[[CostConfig], dict[str, Any]]
    backward: str
    fused: bool = False


def transformer_cost(tokens: int, config: CostConfig) -> LayerCost:
    """Fused multi-head self-attention over ``tokens`` tokens: qkv and output projections, QKᵀ and PV."""
    dim, heads = config.dim, config.heads
    return LayerCost(heads * tokens**2, 8 * tokens * dim**2 + 4 * tokens**2 * dim, 5 * tokens * dim + heads * tokens)
