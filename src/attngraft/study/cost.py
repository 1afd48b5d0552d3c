"""The cost of one attention layer as the image grows: analytic formulas, checked against the blocks themselves.

Each block states its own formula (:attr:`attngraft.blocks.Block.cost_entry`, with the formula beside the block);
this module turns every costed block into a design (plus the ViT, ``mhsa`` over patches) and measures it.

For an image side R (N = R² pixels), channels C, h heads (groups G = h for the relation layer), patch p, kernel k,
window w, one layer on one image, fp32:

==============  ==========================  ==============================  ====================================
design          attention-matrix entries    forward FLOPs (2 per mult-add)  activations kept for the backward
==============  ==========================  ==============================  ====================================
mhsa (pixels)   h·N²                        8NC² + 4N²C                     5NC + hN
vit, patch p    h·T², T = (R/p)² + 1        8TC² + 4T²C                     5TC + hT
graph           h·N²                        4NC² + 4NC + 2N²C               3NC + 2hN²
local, k×k      h·N·k²                      6NC² + 4NCk² + 2NCk             5NC + hN
local_relation  G·N·k²                      4NCG + 2Nk²(2G + C) + 2GN + g   2NC + 6GN + (32 + G)k²
window, w×w     h·P·w², P = (⌈R/w⌉·w)²      8PC² + 4PCw²                    6PC + hPw² + 4P
non_local       N²                          4NC² + 2N²C                     2NC + 5NC/2 + N + 2C
==============  ==========================  ==============================  ====================================

(g: the relation layer's geometry network on the k² offsets, 2k²·32·(2 + G).) The pixel designs grow as R⁴, the
windowed ones as R². Activations are the elements autograd keeps for the backward, parameters excluded, as the
blocks are written: fused attention (mhsa, vit: ``scaled_dot_product_attention``) keeps the input, q, k, v, the
output and a log-sum-exp per query instead of the matrix, and recomputes the matrix in the backward; local keeps
the same through its fused k×k kernel (:mod:`attngraft.blocks.kernels`); the relation layer runs on that kernel
too and keeps its input, its keys, its 2-dim appearance queries and keys ``[q, 1]``, ``[2k, −k²]``, the output and
a log-sum-exp, and its geometry network's activations; graph keeps scores and probabilities; window keeps its
probabilities (computed one batch chunk at a time) and its two token orders (int64, counted as 4P
four-byte elements); non-local keeps q, k, v, the output and a log-sum-exp (fused SDPA) and its batch norm's
input, no N² matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attngraft.blocks import BLOCKS, create_block, record_attention
from attngraft.blocks.cost import (
    BYTES_PER_ELEMENT,
    GRADIENTS,
    CostConfig,
    CostEntry,
    LayerCost,
    transformer_cost,
)
from attngraft.errors import UnknownNameError
from attngraft.models.cost import flops
from attngraft.registry import Registry, unknown_name_message

__all__ = ["BYTES_PER_ELEMENT", "DESIGNS", "CostConfig", "Design", "LayerCost", "layer_cost", "measured_cost"]


@dataclass(frozen=True)
class Design:
    """An attention design: its analytic cost and the block that realises it.

    Attributes:
        title: ``config → display name``.
        cost: ``(side, config) → LayerCost``.
        block: ``config → block``.
        input_shape: ``(side, config) → the block's input shape`` for one image.
        backward: What the backward holds beyond the kept activations (explains the measured peak).
        fused: Whether the block never materialises its attention matrices (a fused kernel recomputes them).
    """

    title: Callable[[CostConfig], str]
    cost: Callable[[int, CostConfig], LayerCost]
    block: Callable[[CostConfig], nn.Module]
    input_shape: Callable[[int, CostConfig], tuple[int, ...]]
    backward: str
    fused: bool = False


DESIGNS: Registry[Design] = Registry("attention design")
ALIASES = {"pixel_vit": "mhsa"}  # the and the literature's name for a transformer on pixels


def design_name(name: str) -> str:
    """The registered name of ``name`` (aliases resolved); unknown names raise with the valid ones listed."""
    if name not in ALIASES and name not in DESIGNS:
        raise UnknownNameError(unknown_name_message(DESIGNS.kind, name, [*DESIGNS.names(), *ALIASES]))
    return ALIASES.get(name, name)


def check_side(side: int, config: CostConfig) -> None:
    """Raises ``ValueError`` when an image side is too small for the designs (a ViT needs one patch)."""
    if side < config.patch:
        raise ValueError(f"image side {side} is smaller than the patch side {config.patch}")


def _pixels(side: int) -> int:
    return side * side


def _tokens(side: int, config: CostConfig) -> tuple[int, ...]:
    return (1, _pixels(side), config.dim)


def _map(side: int, config: CostConfig) -> tuple[int, ...]:
    return (1, config.dim, side, side)


def _vit_tokens(side: int, config: CostConfig) -> int:
    return (side // config.patch) ** 2 + 1


def _design(name: str, entry: CostEntry) -> Design:
    """The design of block ``name`` from its own cost entry."""
    return Design(
        title=entry.title,
        cost=entry.cost,
        block=lambda config: create_block(name, config.dim, **entry.options(config)),
        input_shape=_tokens if BLOCKS.get(name).layout == "tokens" else _map,
        backward=entry.backward,
        fused=entry.fused,
    )


def _vit_design() -> Design:
    """A ViT: ``mhsa`` over p×p patches plus a class token."""
    return Design(
        title=lambda config: f"ViT, {config.patch}×{config.patch} patches + class token",
        cost=lambda side, config: transformer_cost(_vit_tokens(side, config), config),
        block=lambda config: create_block("mhsa", config.dim, num_heads=config.heads),
        input_shape=lambda side, config: (1, _vit_tokens(side, config), config.dim),
        backward=f"{GRADIENTS}; the matrix is recomputed block by block",
        fused=True,
    )


def _register() -> None:
    """Every block with a cost entry (:attr:`attngraft.blocks.Block.cost_entry`); pixel transformer and ViT first."""
    costed = [name for name in BLOCKS.names() if BLOCKS.get(name).cost_entry is not None]
    for name in sorted(costed, key=lambda name: name != "mhsa"):
        entry = BLOCKS.get(name).cost_entry
        if entry is not None:
            DESIGNS.add(name, _design(name, entry))
        if name == "mhsa":
            DESIGNS.add("vit", _vit_design())


_register()


def measured_cost(design: str, side: int, config: CostConfig) -> LayerCost:
    """The layer's cost measured on one random image: use it only for sizes that fit in memory.

    Entries from the recorded probabilities, FLOPs from ``torch.utils.flop_counter`` (plus the elementwise
    attention of k×k blocks, which it cannot see: :meth:`Block.attention_flops`), activations from the tensors
    autograd saves (:func:`saved_bytes`).
    """
    entry = DESIGNS.get(design)
    return layer_cost(entry.block(config), entry.input_shape(side, config))


def layer_cost(block: nn.Module, shape: tuple[int, ...]) -> LayerCost:
    """Entries, FLOPs and saved activations of ``block`` on a random input of ``shape``, on the block's device."""
    device = next(block.parameters()).device
    block.eval()
    with torch.no_grad(), record_attention(block) as records:
        block(torch.randn(*shape, device=device))
    entries = sum(probabilities.numel() for calls in records.values() for probabilities in calls)
    saved = saved_bytes(block, shape)
    return LayerCost(entries, flops(block, shape), saved // BYTES_PER_ELEMENT)


def saved_bytes(block: nn.Module, shape: tuple[int, ...]) -> int:
    """Bytes of the tensors one training forward keeps for its backward: each storage once, parameters excluded."""
    device = next(block.parameters()).device
    own = {tensor.untyped_storage().data_ptr() for tensor in [*block.parameters(), *block.buffers()]}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        block.train()(torch.randn(*shape, device=device, requires_grad=True))
    return sum(storages.values())


def peak_bytes(block: nn.Module, images: torch.Tensor) -> int:
    """The most memory live at once during one forward+backward, above what was live before (weights, input).

    CUDA: the caching allocator's peak. CPU: PyTorch's ``MemTracker``, which follows every tensor storage through
    the dispatcher (kernels' internal scratch buffers are not tensors and are not seen).
    """
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
        torch.cuda.reset_peak_memory_stats(images.device)
        before = torch.cuda.memory_allocated(images.device)
        block(images).sum().backward()
        return torch.cuda.max_memory_allocated(images.device) - before
    try:  # CPU memory has no allocator statistics; MemTracker is PyTorch's, in a private module
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as error:
        raise RuntimeError(
            f"measuring CPU peak memory needs torch.distributed._tools.mem_tracker (torch {torch.__version__} "
            "has none); measure on CUDA or use a torch build with torch.distributed"
        ) from error
    tracker = MemTracker()
    tracker.track_external(block, images)
    with tracker:
        before = _snapshot_total(tracker.get_tracker_snapshot("current"), images.device)
        block(images).sum().backward()
    return _snapshot_total(tracker.get_tracker_snapshot("peak"), images.device) - before


def _snapshot_total(snapshot: dict[torch.device, dict[str, int]], device: torch.device) -> int:
    return sum(values["Total"] for key, values in snapshot.items() if torch.device(key).type == device.type)
