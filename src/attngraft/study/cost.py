"""The cost of one attention layer as the image grows: analytic formulas, checked against the blocks themselves.

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

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from attngraft.blocks import create_block, record_attention
from attngraft.errors import UnknownNameError
from attngraft.models.cost import flops
from attngraft.registry import Registry, unknown_name_message

BYTES_PER_ELEMENT = 4  # fp32
GEOMETRY_HIDDEN = 32  # the relation layer's default geometry network width


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


def _transformer_cost(tokens: int, config: CostConfig) -> LayerCost:
    """Fused multi-head self-attention over ``tokens`` tokens: qkv and output projections, QKᵀ and PV."""
    dim, heads = config.dim, config.heads
    return LayerCost(heads * tokens**2, 8 * tokens * dim**2 + 4 * tokens**2 * dim, 5 * tokens * dim + heads * tokens)


def _graph_cost(side: int, config: CostConfig) -> LayerCost:
    pixels, dim, heads = _pixels(side), config.dim, config.heads
    return LayerCost(
        heads * pixels**2,
        4 * pixels * dim**2 + 4 * pixels * dim + 2 * pixels**2 * dim,
        3 * pixels * dim + 2 * heads * pixels**2,
    )


def _local_cost(side: int, config: CostConfig) -> LayerCost:
    pixels, dim, heads, kernel = _pixels(side), config.dim, config.heads, config.kernel
    return LayerCost(
        heads * pixels * kernel**2,
        6 * pixels * dim**2 + 4 * pixels * dim * kernel**2 + 2 * pixels * dim * kernel,
        5 * pixels * dim + heads * pixels,
    )


def _relation_cost(side: int, config: CostConfig) -> LayerCost:
    pixels, dim, groups, taps = _pixels(side), config.dim, config.heads, config.kernel**2
    geometry = 2 * taps * GEOMETRY_HIDDEN * (2 + groups)
    return LayerCost(
        groups * pixels * taps,
        4 * pixels * dim * groups + 2 * pixels * taps * (2 * groups + dim) + 2 * groups * pixels + geometry,
        2 * pixels * dim + 6 * groups * pixels + (GEOMETRY_HIDDEN + groups) * taps,
    )


def _window_cost(side: int, config: CostConfig) -> LayerCost:
    window, dim, heads = config.window, config.dim, config.heads
    padded = (math.ceil(side / window) * window) ** 2
    return LayerCost(
        heads * padded * window**2,
        8 * padded * dim**2 + 4 * padded * dim * window**2,
        6 * padded * dim + heads * padded * window**2 + 4 * padded,
    )


def _non_local_cost(side: int, config: CostConfig) -> LayerCost:
    pixels, dim = _pixels(side), config.dim
    inner = max(dim // 2, 1)  # the block's θ, φ, g width
    return LayerCost(
        pixels**2, 4 * pixels * dim**2 + 2 * pixels**2 * dim, 2 * pixels * dim + 5 * pixels * inner + pixels + 2 * dim
    )


GRADIENTS = "the gradients of the output, the input and the weights"


def _register() -> None:
    DESIGNS.add(
        "mhsa",
        Design(
            title=lambda config: "pixel transformer: MHSA over every pixel",
            cost=lambda side, config: _transformer_cost(_pixels(side), config),
            block=lambda config: create_block("mhsa", config.dim, num_heads=config.heads),
            input_shape=_tokens,
            backward=f"{GRADIENTS}; the matrix is recomputed block by block",
            fused=True,
        ),
    )
    DESIGNS.add(
        "vit",
        Design(
            title=lambda config: f"ViT, {config.patch}×{config.patch} patches + class token",
            cost=lambda side, config: _transformer_cost(_vit_tokens(side, config), config),
            block=lambda config: create_block("mhsa", config.dim, num_heads=config.heads),
            input_shape=lambda side, config: (1, _vit_tokens(side, config), config.dim),
            backward=f"{GRADIENTS}; the matrix is recomputed block by block",
            fused=True,
        ),
    )
    DESIGNS.add(
        "graph",
        Design(
            title=lambda config: "graph attention over every pixel",
            cost=_graph_cost,
            block=lambda config: create_block("graph", config.dim, num_heads=config.heads),
            input_shape=_tokens,
            backward=f"{GRADIENTS}; the gradients of its kept scores and probabilities",
        ),
    )
    DESIGNS.add(
        "local",
        Design(
            title=lambda config: f"SASA local {config.kernel}×{config.kernel}",
            cost=_local_cost,
            block=lambda config: create_block("local", config.dim, num_heads=config.heads, kernel_size=config.kernel),
            input_shape=_map,
            backward=f"{GRADIENTS}; the fused kernel recomputes the probabilities tile by tile in its own scratch "
            "(not tensors, so not seen on CPU)",
        ),
    )
    DESIGNS.add(
        "local_relation",
        Design(
            title=lambda config: f"local relation {config.kernel}×{config.kernel}",
            cost=_relation_cost,
            block=lambda config: create_block(
                "local_relation",
                config.dim,
                groups=config.heads,
                kernel_size=config.kernel,
                geometry_hidden=GEOMETRY_HIDDEN,
            ),
            input_shape=_map,
            backward=f"{GRADIENTS}; the fused kernel recomputes its weights tile by tile in its own scratch",
        ),
    )
    DESIGNS.add(
        "window",
        Design(
            title=lambda config: f"Swin windows {config.window}×{config.window}",
            cost=_window_cost,
            block=lambda config: create_block("window", config.dim, num_heads=config.heads, window_size=config.window),
            input_shape=_map,
            backward=f"{GRADIENTS}; the gradient of its kept bias-and-mask matrix",
        ),
    )
    DESIGNS.add(
        "non_local",
        Design(
            title=lambda config: "non-local",
            cost=_non_local_cost,
            block=lambda config: create_block("non_local", config.dim),
            input_shape=_map,
            backward=f"{GRADIENTS}; the matrix is recomputed block by block",
            fused=True,
        ),
    )


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
