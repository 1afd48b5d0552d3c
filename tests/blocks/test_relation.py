"""local_relation and local_stem against per-pixel loops written from their papers' formulas."""

from __future__ import annotations

import pytest
import torch

from attngraft.blocks import create_block, record_attention

from .conftest import randomise_parameters


def window(height: int, width: int, i: int, j: int, radius: int) -> list[tuple[int, int]]:
    rows = range(max(0, i - radius), min(height, i + radius + 1))
    return [(a, c) for a in rows for c in range(max(0, j - radius), min(width, j + radius + 1))]


def local_relation_loop(block, x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    radius, groups = block.kernel_size // 2, block.groups
    per_group = channels // groups
    q, k = block.query(x), block.key(x)
    out = torch.zeros_like(x)
    for b in range(batch):
        for g in range(groups):
            for i in range(height):
                for j in range(width):
                    neighbours = window(height, width, i, j, radius)
                    logits = []
                    for a, c in neighbours:
                        offset = torch.tensor([[[float(a - i)]], [[float(c - j)]]])[None]  # (1, 2, 1, 1)
                        prior = block.geometry(offset)[0, g, 0, 0]
                        logits.append(-((q[b, g, i, j] - k[b, g, a, c]) ** 2) + prior)
                    weights = torch.stack(logits).softmax(0)
                    group = slice(g * per_group, (g + 1) * per_group)
                    out[b, group, i, j] = sum(
                        w * x[b, group, a, c] for w, (a, c) in zip(weights, neighbours, strict=True)
                    )
    return out


@pytest.mark.parametrize(("kernel_size", "size"), [(3, (5, 6)), (5, (4, 7))])
def test_local_relation_matches_loop(kernel_size: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = create_block("local_relation", 8, kernel_size=kernel_size, groups=2, geometry_hidden=4)
    randomise_parameters(block)
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        torch.testing.assert_close(block(x), local_relation_loop(block, x), atol=1e-5, rtol=1e-4)


def local_stem_loop(block, x: torch.Tensor) -> torch.Tensor:
    batch, _, height, width = x.shape
    heads, head_dim, radius, pool = block.num_heads, block.head_dim, block.kernel_size // 2, block.pool_size
    half, out_dim = head_dim // 2, block.out_dim
    q, k = block.query(x), block.key(x)
    values = block.values(x).view(batch, block.mixtures, out_dim, height, width)
    out = torch.zeros(batch, out_dim, height, width)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                neighbours = window(height, width, i, j, radius)
                mixed = []
                for a, c in neighbours:
                    embedding = block.position_rows[a % pool] + block.position_cols[c % pool]
                    p = (block.mixture_embeddings @ embedding).softmax(0)  # (m,)
                    mixed.append((p[:, None] * values[b, :, :, a, c]).sum(0))  # (out_dim,)
                for h in range(heads):
                    dims = slice(h * head_dim, (h + 1) * head_dim)
                    query = q[b, dims, i, j]
                    logits = torch.stack(
                        [
                            query @ k[b, dims, a, c]
                            + query[:half] @ block.rel_rows[h, a - i + radius]
                            + query[half:] @ block.rel_cols[h, c - j + radius]
                            for a, c in neighbours
                        ]
                    )
                    weights = logits.softmax(0)
                    out[b, dims, i, j] = sum(w * v[dims] for w, v in zip(weights, mixed, strict=True))
    return out


def test_local_stem_matches_loop() -> None:
    torch.manual_seed(0)
    block = create_block("local_stem", 3, out_dim=8, num_heads=2, kernel_size=3, mixtures=3, pool_size=2)
    randomise_parameters(block)
    x = torch.randn(2, 3, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), local_stem_loop(block, x), atol=1e-5, rtol=1e-4)


def test_local_stem_mixture_weights_depend_on_pool_position() -> None:
    block = create_block("local_stem", 3, out_dim=8, num_heads=2, pool_size=4)
    randomise_parameters(block)
    weights = block.mixture_weights(8, 8)
    torch.testing.assert_close(weights.sum(0), torch.ones(8, 8))
    torch.testing.assert_close(weights[:, :4, :4], weights[:, 4:, 4:])  # aligned to the pooling windows
    assert not torch.allclose(weights[:, 0, 0], weights[:, 1, 2])


@pytest.mark.parametrize("name", ["local_relation", "local_stem"])
def test_recorded_weights_are_window_distributions(name: str) -> None:
    block = create_block(name, 8, kernel_size=3, **({"num_heads": 2} if name == "local_stem" else {"groups": 2}))
    with record_attention(block) as records:
        block(torch.randn(1, 8, 4, 5))
    (weights,) = records["probe"]
    assert weights.shape == (1, 2, 4, 5, 3, 3)
    torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(1, 2, 4, 5))
    assert (weights[:, :, 0, :, 0] == 0).all()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("local_relation", {"groups": 3}, "groups=3 must divide dim=8"),
        ("local_relation", {"kernel_size": 2}, "kernel_size must be a positive odd integer"),
        ("local_stem", {"num_heads": 2, "mixtures": 0}, "mixtures and pool_size must be positive"),
    ],
)
def test_invalid_options(name: str, options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_block(name, 8, **options)
