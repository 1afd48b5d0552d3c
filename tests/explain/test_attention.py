from __future__ import annotations

import pytest
import torch
from torch import nn

from attngraft.blocks import AttentionProbe, Block, create_block
from attngraft.explain import query_map, record, rollout, token_map
from attngraft.explain.attention import map_position, token_layout
from attngraft.grafting import build
from attngraft.models import create_model


def _probabilities(batch: int, heads: int, tokens: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, tokens, tokens, generator=generator).softmax(dim=-1)


def test_rollout_rows_sum_to_one_and_chain_the_layers() -> None:
    layers = [_probabilities(2, 4, 10, seed) for seed in range(3)]
    combined = rollout(layers)
    assert combined.shape == (2, 10, 10)
    torch.testing.assert_close(combined.sum(dim=-1), torch.ones(2, 10))
    # One layer, no residual: the head mean itself; two layers: the product, later layer on the left.
    torch.testing.assert_close(rollout(layers[:1], residual=0.0), layers[0].mean(dim=1))
    expected = layers[1].mean(dim=1) @ layers[0].mean(dim=1)
    torch.testing.assert_close(rollout(layers[:2], residual=0.0), expected)
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(layers, head_fusion="median")


def test_token_map_reads_the_class_row_over_the_patch_grid() -> None:
    attention = _probabilities(1, 1, 5)[:, 0]  # (1, 5, 5): a class token and a 2×2 grid
    grid = token_map(attention, prefix_tokens=1, grid=(2, 2))
    assert grid.shape == (1, 2, 2)
    torch.testing.assert_close(grid.flatten(1), attention[:, 0, 1:] / attention[:, 0, 1:].sum())
    without_class = token_map(attention[:, 1:, 1:], prefix_tokens=0, grid=(2, 2))
    columns = attention[:, 1:, 1:].mean(dim=1)  # every query's row, averaged
    torch.testing.assert_close(without_class.flatten(1), columns / columns.sum())
    distilled = token_map(attention, prefix_tokens=2, grid=(1, 3))  # DeiT: class and distillation rows
    rows = attention[:, :2, 2:].mean(dim=1)
    torch.testing.assert_close(distilled.flatten(1), rows / rows.sum())


def test_recording_a_vit_gives_its_layers_grid_and_a_normalised_rollout() -> None:
    model = create_model("vit", img_size=28, patch_size=7).eval()
    images = torch.randn(2, 1, 28, 28)
    _, records = record(model, images)
    assert len(records) == len(model.layers) > 1
    assert {entry.kind for entry in records} == {"tokens"}
    assert all(entry.prefix_tokens == 1 and entry.map_size == (4, 4) for entry in records)
    combined = rollout([entry.probabilities for entry in records])
    torch.testing.assert_close(combined.sum(dim=-1), torch.ones(2, 17))


@pytest.mark.parametrize(("name", "prefix"), [("deit", 2), ("deepvit", 1)])
def test_deit_and_deepvit_records_know_their_prefix_tokens(name: str, prefix: int) -> None:
    model = create_model(name, img_size=28, patch_size=7).eval()
    _, records = record(model, torch.randn(1, 1, 28, 28))
    assert [(entry.prefix_tokens, entry.map_size) for entry in records] == [(prefix, (4, 4))] * len(model.layers)
    maps = token_map(rollout([entry.probabilities for entry in records]), prefix, (4, 4))
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(1))


def test_recording_leaves_no_hooks_and_does_not_change_outputs() -> None:
    spec = {
        "backbone": "attngraft/resnet18",
        "in_chans": 1,
        "num_classes": 10,
        "image_size": 28,
        "graft": [
            {"mode": "insert", "block": "window", "after": "layer1", "window_size": 4, "shift_size": 2},
            {"mode": "head", "block": "mhsa", "stage": "layer2", "patch_size": 1, "embed_dim": 32},
        ],
    }
    model = build(spec).eval()
    hooks = {name: _hooks(module) for name, module in model.named_modules()}  # inserts are forward hooks
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        before = model(images)
    recorded, records = record(model, images)
    with torch.no_grad():
        after = model(images)
    torch.testing.assert_close(recorded, before, rtol=1e-4, atol=1e-5)  # the materialised path computes the same
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert {entry.kind for entry in records} == {"map", "tokens"}
    assert {name: _hooks(module) for name, module in model.named_modules()} == hooks
    assert not any(module.enabled for module in model.modules() if isinstance(module, AttentionProbe))


def _hooks(module: nn.Module) -> tuple[list[int], list[int]]:
    return list(module._forward_hooks), list(module._forward_pre_hooks)


def _support_by_gradient(block: nn.Module, x: torch.Tensor, query: tuple[int, int]) -> torch.Tensor:
    """Pixels whose input moves the block's output at ``query`` (its receptive field), as a (H, W) bool map."""
    x = x.clone().requires_grad_(True)
    block(x)[0, :, query[0], query[1]].sum().backward()
    assert x.grad is not None
    return x.grad[0].abs().sum(dim=0) > 0


@pytest.mark.parametrize(
    ("name", "options", "query"),
    [
        ("local", {"kernel_size": 3, "num_heads": 2}, (0, 4)),
        ("local", {"kernel_size": 5, "num_heads": 2}, (3, 3)),
        ("local_relation", {"kernel_size": 3, "groups": 2}, (5, 0)),
        ("window", {"window_size": 3, "shift_size": 0, "num_heads": 2}, (4, 1)),
        ("window", {"window_size": 3, "shift_size": 1, "num_heads": 2}, (2, 6)),
        ("window", {"window_size": 4, "shift_size": 2, "num_heads": 2}, (6, 3)),
    ],
)
def test_query_maps_cover_exactly_the_pixels_a_query_attends_to(
    name: str, options: dict[str, int], query: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    block = create_block(name, 16, **options).eval()
    x = torch.randn(1, 16, 7, 7)  # 7 is not a multiple of the windows: padding is exercised
    _, records = record(block, x)
    (entry,) = records
    maps = query_map(entry, torch.tensor([query]))  # (1, heads, 7, 7)
    assert maps.shape[-2:] == (7, 7)
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(maps.shape[:2]))
    assert torch.equal(maps[0].sum(dim=0) > 0, _support_by_gradient(block, x, query))


@pytest.mark.parametrize("shift", [0, 1])
def test_window_query_map_weights_the_values_the_query_pixel_mixes(shift: int) -> None:
    """Without the output projection, the block's output at a pixel is Σ_j map[j] · value[j] per head."""
    torch.manual_seed(0)
    block = create_block("window", 8, window_size=3, shift_size=shift, num_heads=2).eval()
    block.proj = nn.Identity()
    x = torch.randn(1, 8, 7, 7)
    output, (entry,) = record(block, x)
    values = block.qkv(x.permute(0, 2, 3, 1)).view(7, 7, 3, 2, 4)[:, :, 2]  # (H, W, heads, head_dim)
    for query in [(0, 0), (2, 4), (6, 6), (4, 1)]:
        maps = query_map(entry, torch.tensor([query]))[0]  # (heads, H, W)
        expected = torch.einsum("hyx,yxhd->hd", maps, values)
        torch.testing.assert_close(output[0, :, query[0], query[1]].view(2, 4), expected, rtol=1e-4, atol=1e-5)


def test_local_query_map_weights_the_values_the_query_pixel_mixes() -> None:
    torch.manual_seed(0)
    block = create_block("local", 8, kernel_size=3, num_heads=2).eval()
    x = torch.randn(1, 8, 9, 9)  # larger than the dense path's small maps: the window path
    output, (entry,) = record(block, x)
    values = block.qkv(x).view(3, 2, 4, 9, 9)[2]  # (heads, head_dim, H, W)
    for query in [(0, 0), (4, 7), (8, 3)]:
        maps = query_map(entry, torch.tensor([query]))[0]  # (heads, H, W)
        expected = torch.einsum("hyx,hdyx->hd", maps, values)
        torch.testing.assert_close(output[0, :, query[0], query[1]].view(2, 4), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("subsample", [False, True])
def test_non_local_query_map_is_the_query_row_over_the_key_grid(subsample: bool) -> None:
    block = create_block("non_local", 8, subsample=subsample, zero_init=False).eval()
    _, (entry,) = record(block, torch.randn(2, 8, 6, 6))
    maps = query_map(entry, torch.tensor([[1, 2], [5, 5]]))
    side = 3 if subsample else 6
    assert maps.shape == (2, 1, side, side)
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, 1))
    torch.testing.assert_close(maps[1, 0].flatten(), entry.probabilities[1, 0, 5 * 6 + 5])


def test_token_layout_infers_a_grid_without_a_vit_and_rejects_a_misfit() -> None:
    block = nn.Module()
    assert token_layout(block, "", 12, (30, 40)) == (0, (3, 4))
    with pytest.raises(ValueError, match="do not form a grid"):
        token_layout(block, "", 7, (28, 28))


def test_map_position_scales_image_pixels_to_the_map() -> None:
    assert map_position((27, 0), (28, 28), (4, 4)) == (3, 0)
    assert map_position((14, 13), (28, 28), (7, 7)) == (3, 3)


class _Spotlight(Block):
    """A map block of the test's own: each pixel attends only to itself; explain learns that from the block alone."""

    layout = "map"
    family = "test"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.probe = AttentionProbe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probe.enabled:
            self.probe(torch.ones(x.shape[0], *x.shape[2:]))  # (B, H, W): anything the block can read back
        return x

    def query_attention(
        self, probabilities: torch.Tensor, query: tuple[int, int], map_size: tuple[int, int]
    ) -> torch.Tensor:
        spot = torch.zeros(1, *map_size)
        spot[0, query[0], query[1]] = probabilities[query[0], query[1]]
        return spot


def test_a_new_map_block_is_drawn_by_its_own_query_attention() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), _Spotlight(4))
    _, records = record(model, torch.randn(2, 1, 5, 6))
    (entry,) = records
    assert entry.kind == "map"
    maps = query_map(entry, torch.tensor([[1, 2], [4, 5]]))
    assert maps.shape == (2, 1, 5, 6)
    assert maps[0, 0, 1, 2] == 1
    assert maps[1, 0, 4, 5] == 1
    assert maps.sum() == 2


def test_blocks_without_per_pixel_maps_say_so() -> None:
    block = create_block("mhsa", 8, num_heads=2)
    assert not block.draws_query_maps()
    with pytest.raises(NotImplementedError, match="MultiHeadSelfAttention records no per-pixel attention map"):
        block.query_attention(torch.ones(2, 4, 4), (0, 0), (2, 2))
