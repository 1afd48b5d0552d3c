"""Each block against an obviously-correct reference written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attngraft.blocks import create_block, record_attention
from attngraft.blocks.graph import grid_neighbourhood_mask

from .conftest import randomise_parameters


def test_mhsa_matches_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    block = create_block("mhsa", 32, num_heads=4).eval()
    reference = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(block.qkv.weight)
        reference.in_proj_bias.copy_(block.qkv.bias)
        reference.out_proj.weight.copy_(block.proj.weight)
        reference.out_proj.bias.copy_(block.proj.bias)
    x = torch.randn(3, 11, 32)
    expected, expected_weights = reference(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    with record_attention(block) as records:
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(records["probe"][0], expected_weights, atol=1e-6, rtol=1e-5)


def graph_attention_loop(block, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """GAT by its definition: an explicit loop over heads and node pairs."""
    batch, tokens, dim = x.shape
    heads, head_dim = block.num_heads, block.head_dim
    z = x @ block.project.weight.T  # (B, N, C)
    out = torch.zeros(batch, tokens, dim)
    for b in range(batch):
        for h in range(heads):
            nodes = z[b, :, h * head_dim : (h + 1) * head_dim]
            for i in range(tokens):
                neighbours = [j for j in range(tokens) if mask is None or mask[i, j]]
                scores = torch.stack(
                    [
                        F.leaky_relu(block.attn_query[h] @ nodes[i] + block.attn_key[h] @ nodes[j], 0.2)
                        for j in neighbours
                    ]
                )
                weights = scores.softmax(0)
                out[b, i, h * head_dim : (h + 1) * head_dim] = sum(
                    w * nodes[j] for w, j in zip(weights, neighbours, strict=True)
                )
    return block.proj(out)


@pytest.mark.parametrize("radius", [None, 1.0, 1.5])
def test_graph_matches_pairwise_loop(radius: float | None) -> None:
    torch.manual_seed(0)
    block = create_block("graph", 16, num_heads=2, radius=radius).eval()
    x = torch.randn(2, 10, 16)  # class token + 3x3 grid
    mask = None if radius is None else grid_neighbourhood_mask((3, 3), radius, 1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), graph_attention_loop(block, x, mask), atol=1e-5, rtol=1e-4)


def test_graph_neighbourhood_rule() -> None:
    mask = grid_neighbourhood_mask((3, 3), radius=1.0, num_prefix_tokens=1)
    assert mask[0].all()  # class token sees every patch
    assert mask[:, 0].all()  # every patch sees the class token
    centre = 1 + 4
    assert mask[centre, 1:].view(3, 3).tolist() == [[False, True, False], [True, True, True], [False, True, False]]
    corner = 1 + 0
    assert mask[corner, 1:].sum() == 3


def test_graph_grid_must_be_inferable() -> None:
    block = create_block("graph", 16, num_heads=2, radius=1.0)
    with pytest.raises(ValueError, match="cannot infer a square grid from 11 patch tokens"):
        block(torch.randn(1, 12, 16))
    rectangular = create_block("graph", 16, num_heads=2, radius=1.0, grid_size=(3, 4))
    assert rectangular(torch.randn(1, 13, 16)).shape == (1, 13, 16)


def test_graph_activation_choice_is_validated() -> None:
    with pytest.raises(ValueError, match="activation='swish' is not valid; choose one of"):
        create_block("graph", 16, num_heads=2, activation="swish")


def test_reattention_matches_formula() -> None:
    torch.manual_seed(0)
    block = create_block("reattention", 16, num_heads=4, norm="none").eval()
    randomise_parameters(block)
    x = torch.randn(2, 7, 16)
    q, k, v = (block.qkv(x).view(2, 7, 3, 4, 4).permute(2, 0, 3, 1, 4)).unbind(0)  # (B, h, N, d)
    attention = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)
    mixed = torch.einsum("bhij,hg->bgij", attention, block.head_mixing)
    expected = block.proj((mixed @ v).transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_reattention_with_identity_mixing_and_no_norm_is_mhsa() -> None:
    torch.manual_seed(0)
    re = create_block("reattention", 16, num_heads=4, norm="none").eval()
    mhsa = create_block("mhsa", 16, num_heads=4).eval()
    mhsa.load_state_dict(re.state_dict(), strict=False)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(re(x), mhsa(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product"])
@pytest.mark.parametrize("subsample", [False, True])
def test_non_local_matches_formula(mode: str, subsample: bool) -> None:
    torch.manual_seed(0)
    block = create_block("non_local", 8, mode=mode, subsample=subsample).eval()
    randomise_parameters(block)
    x = torch.randn(2, 8, 4, 6)
    theta = block.theta(x).flatten(2)  # (B, inner, HW)
    phi, g = block.phi(x), block.g(x)
    if subsample:
        phi, g = F.max_pool2d(phi, 2), F.max_pool2d(g, 2)
    phi, g = phi.flatten(2), g.flatten(2)
    affinity = theta.transpose(1, 2) @ phi  # (B, HW, S)
    f = affinity.softmax(-1) if mode == "embedded_gaussian" else affinity / phi.shape[-1]
    y = (f @ g.transpose(1, 2)).transpose(1, 2).reshape(2, -1, 4, 6)
    expected = x + block.norm(block.out(y))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-4)


def test_non_local_is_identity_at_init() -> None:
    block = create_block("non_local", 8).eval()
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x), x)


def window_attention_loop(block, x: torch.Tensor) -> torch.Tensor:
    """Swin by its definition: shift, pad, then a loop over every window and head, masking by region."""
    batch, dim, height, width = x.shape
    size, shift, heads = block.window_size, block.shift_size, block.num_heads
    if height <= size and width <= size:  # Swin (and timm): a map that fits in one window is not shifted
        shift = 0
    head_dim = dim // heads
    grid = x.permute(0, 2, 3, 1)
    padded = (math.ceil(height / size) * size, math.ceil(width / size) * size)
    canvas = torch.zeros(batch, *padded, dim)
    canvas[:, :height, :width] = grid
    real = torch.zeros(padded, dtype=torch.bool)
    real[:height, :width] = True
    region = torch.zeros(padded)
    if shift:
        edges = [(0, padded[0] - size), (padded[0] - size, padded[0] - shift), (padded[0] - shift, padded[0])]
        col_edges = [(0, padded[1] - size), (padded[1] - size, padded[1] - shift), (padded[1] - shift, padded[1])]
        label = 0
        for r0, r1 in edges:
            for c0, c1 in col_edges:
                region[r0:r1, c0:c1] = label
                label += 1
        canvas, real, region = canvas.roll((-shift, -shift), (1, 2)), real.roll((-shift, -shift), (0, 1)), region
    bias = block.relative_bias()  # (heads, T, T)
    out = torch.zeros(batch, *padded, dim)
    for top in range(0, padded[0], size):
        for left in range(0, padded[1], size):
            tokens = canvas[:, top : top + size, left : left + size].reshape(batch, size * size, dim)
            keep = real[top : top + size, left : left + size].reshape(-1)
            labels = region[top : top + size, left : left + size].reshape(-1)
            allowed = (labels[:, None] == labels[None, :]) & keep[None, :]
            allowed |= torch.eye(size * size, dtype=torch.bool)
            q, k, v = block.qkv(tokens).view(batch, size * size, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            logits = q @ k.transpose(-1, -2) * head_dim**-0.5 + bias
            logits = logits.masked_fill(~allowed, float("-inf"))
            mixed = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, size * size, dim)
            out[:, top : top + size, left : left + size] = block.proj(mixed).view(batch, size, size, dim)
    if shift:
        out = out.roll((shift, shift), (1, 2))
    return out[:, :height, :width].permute(0, 3, 1, 2)


@pytest.mark.parametrize(("shift", "size"), [(0, (8, 8)), (2, (8, 8)), (0, (6, 7)), (2, (9, 5)), (1, (3, 3))])
def test_window_matches_loop_over_windows(shift: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = create_block("window", 16, num_heads=2, window_size=4, shift_size=shift).eval()
    randomise_parameters(block)
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        torch.testing.assert_close(block(x), window_attention_loop(block, x), atol=1e-5, rtol=1e-4)


def test_window_output_ignores_padding_and_shift_mask_blocks_wraparound() -> None:
    torch.manual_seed(0)
    block = create_block("window", 16, num_heads=2, window_size=4, shift_size=2).eval()
    x = torch.randn(1, 16, 8, 8)
    changed = x.clone()
    changed[..., 0, 0] += 10.0  # top-left pixel: after the cyclic shift it shares a window with the far corner
    difference = (block(changed) - block(x)).abs().sum(1)[0]
    assert difference[7, 7] == 0
    assert difference[0, 0] > 0


@pytest.mark.parametrize("window_options", [{"window_size": 0}, {"window_size": 4, "shift_size": 4}])
def test_window_options_validated(window_options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="0 <= shift_size < window_size"):
        create_block("window", 16, num_heads=2, **window_options)


def test_squeeze_excite_matches_formula() -> None:
    torch.manual_seed(0)
    block = create_block("se", 16, reduction=2).eval()
    x = torch.randn(2, 16, 5, 5)
    gate = block.gate
    hidden = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), gate.fc1.weight, gate.fc1.bias))
    expected = x * torch.sigmoid(F.conv2d(hidden, gate.fc2.weight, gate.fc2.bias))
    torch.testing.assert_close(block(x), expected)


def test_eca_kernel_size_adapts_to_channels_or_is_given() -> None:
    assert create_block("eca", 64).gate.conv.kernel_size == (3,)
    assert create_block("eca", 512).gate.conv.kernel_size == (5,)
    assert create_block("eca", 64, kernel_size=7).gate.conv.kernel_size == (7,)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        create_block("eca", 64, kernel_size=4)


@pytest.mark.parametrize("name", ["mhsa", "graph", "reattention"])
def test_global_token_mixers_are_permutation_equivariant(name: str) -> None:
    torch.manual_seed(0)
    block = create_block(name, 16, num_heads=4).eval()
    x = torch.randn(2, 9, 16)
    permutation = torch.randperm(9)
    torch.testing.assert_close(block(x[:, permutation]), block(x)[:, permutation], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["mhsa", "graph", "reattention", "window", "non_local"])
def test_recorded_probabilities_rows_sum_to_one(name: str) -> None:
    torch.manual_seed(0)
    block = create_block(name, 16, **({"num_heads": 4} if name != "non_local" else {})).eval()
    x = torch.randn(2, 9, 16) if block.layout == "tokens" else torch.randn(2, 16, 6, 6)
    with record_attention(block) as records:
        block(x)
    (probabilities,) = records["probe"]
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(probabilities.shape[:-1]))


def test_encoder_layer_with_zero_layer_scale_is_identity_and_rejects_map_mixers() -> None:
    from attngraft.blocks import EncoderLayer

    layer = EncoderLayer(16, mixer="graph", num_heads=4, layer_scale=0.0)
    x = torch.randn(2, 5, 16)
    assert torch.equal(layer(x), x)
    with pytest.raises(
        ValueError, match="mixer 'window' takes maps; token mixers: \\['graph', 'mhsa', 'reattention'\\]"
    ):
        EncoderLayer(16, mixer="window")
