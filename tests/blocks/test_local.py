"""SASA local attention against a per-pixel loop written from the paper's formula."""

from __future__ import annotations

import pytest
import torch

from attngraft.blocks import create_block, record_attention
from attngraft.blocks.kernels import native

from .conftest import randomise_parameters

# The compiled kernel where it can be built here (a C++ compiler), and always the pure-PyTorch one.
BACKENDS_HERE = ["native", "reference"] if native.available() else ["reference"]


def sasa_loop(block, x: torch.Tensor) -> torch.Tensor:
    """y_ij = Σ_ab softmax(q·k_ab + q·r_{a-i,b-j}) v_ab over the in-image part of each k×k window."""
    batch, _, height, width = x.shape
    heads, head_dim, radius = block.num_heads, block.head_dim, block.kernel_size // 2
    half = head_dim // 2
    q, k, v = block.qkv(x).view(batch, 3, heads, head_dim, height, width).unbind(1)
    out = torch.zeros(batch, heads, head_dim, height, width)
    for b in range(batch):
        for h in range(heads):
            for i in range(height):
                for j in range(width):
                    query = q[b, h, :, i, j]
                    logits, values = [], []
                    for a in range(max(0, i - radius), min(height, i + radius + 1)):
                        for c in range(max(0, j - radius), min(width, j + radius + 1)):
                            relative = torch.cat([block.rel_rows[h, a - i + radius], block.rel_cols[h, c - j + radius]])
                            logits.append(
                                query @ k[b, h, :, a, c]
                                + query[:half] @ relative[:half]
                                + query[half:] @ relative[half:]
                            )
                            values.append(v[b, h, :, a, c])
                    weights = torch.stack(logits).softmax(0)
                    out[b, h, :, i, j] = (weights[:, None] * torch.stack(values)).sum(0)
    return out.reshape(batch, heads * head_dim, height, width)


@pytest.mark.parametrize(("kernel_size", "size"), [(3, (6, 7)), (3, (5, 5)), (5, (7, 9)), (7, (4, 4)), (1, (3, 2))])
def test_local_matches_per_pixel_loop(kernel_size: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = create_block("local", 8, num_heads=2, kernel_size=kernel_size)
    randomise_parameters(block)
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        torch.testing.assert_close(block(x), sasa_loop(block, x), atol=1e-5, rtol=1e-4)


def outputs_and_gradients(block: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output, then the gradients of the input and of every parameter, of a weighted sum of the output."""
    block.zero_grad()
    inputs = x.detach().clone().requires_grad_()
    out = block(inputs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out, inputs.grad, *(parameter.grad for parameter in block.parameters())]


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize(("kernel_size", "size"), [(3, (4, 4)), (3, (2, 5)), (7, (4, 4)), (5, (7, 19)), (1, (2, 2))])
def test_every_backend_gives_the_block_the_same_outputs_and_gradients(
    backend: str, kernel_size: int, size: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    block = create_block("local", 8, num_heads=2, kernel_size=kernel_size).double()
    randomise_parameters(block)
    x = torch.randn(3, 8, *size, dtype=torch.float64)
    with record_attention(block):  # the plain autograd path, which materialises the probabilities
        expected = outputs_and_gradients(block, x)
    block.backend = backend
    for result, reference in zip(outputs_and_gradients(block, x), expected, strict=True):
        torch.testing.assert_close(result, reference, atol=1e-12, rtol=1e-10)


def test_pixels_outside_the_window_have_no_influence() -> None:
    torch.manual_seed(0)
    block = create_block("local", 16, num_heads=2, kernel_size=3)
    x = torch.randn(1, 16, 9, 9)
    changed = x.clone()
    changed[..., 4, 4] += 5.0
    moved = (block(changed) - block(x)).abs().sum(1)[0] > 0
    expected = torch.zeros(9, 9, dtype=torch.bool)
    expected[3:6, 3:6] = True  # exactly the pixels whose 3x3 window contains (4, 4)
    assert torch.equal(moved, expected)


def test_translation_equivariant_away_from_borders() -> None:
    torch.manual_seed(0)
    block = create_block("local", 16, num_heads=2, kernel_size=3)
    x = torch.randn(1, 16, 12, 12)
    shifted = torch.roll(x, shifts=(2, 1), dims=(2, 3))
    out, out_shifted = block(x), block(shifted)
    # interior of the original whose window (and the shifted one) stays away from the borders and the wrap
    torch.testing.assert_close(out_shifted[..., 4:10, 3:10], out[..., 2:8, 2:9], atol=1e-5, rtol=1e-4)


def test_recorded_windows_are_distributions_over_in_image_neighbours() -> None:
    torch.manual_seed(0)
    block = create_block("local", 16, num_heads=2, kernel_size=3).eval()
    x = torch.randn(2, 16, 5, 6)
    fused = block(x)
    with record_attention(block) as records:
        recorded = block(x)
    torch.testing.assert_close(recorded, fused, atol=1e-5, rtol=1e-4)
    (windows,) = records["probe"]
    assert windows.shape == (2, 2, 5, 6, 3, 3)
    torch.testing.assert_close(windows.sum((-2, -1)), torch.ones(2, 2, 5, 6))
    assert (windows[:, :, 0, :, 0, :] == 0).all()  # row above the image
    assert (windows[:, :, :, -1, :, 2] == 0).all()  # column right of the image
    assert (windows[:, :, 2, 2] > 0).all()  # interior pixel: the whole window


def test_stride_two_pools_after_attention_and_out_dim() -> None:
    torch.manual_seed(0)
    block = create_block("local", 16, out_dim=32, num_heads=4, kernel_size=3, stride=2)
    x = torch.randn(2, 16, 8, 10)
    out = block(x)
    assert out.shape == (2, 32, 4, 5)
    unstrided = create_block("local", 16, out_dim=32, num_heads=4, kernel_size=3)
    unstrided.load_state_dict(block.state_dict())
    torch.testing.assert_close(out, torch.nn.functional.avg_pool2d(unstrided(x), 2))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel_size": 4}, "kernel_size must be a positive odd integer"),
        ({"stride": 3}, "stride must be 1 or 2"),
        ({"num_heads": 16}, "head dim 1 must be even"),
        ({"num_heads": 3}, "not divisible by num_heads=3"),
    ],
)
def test_invalid_options(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_block("local", 16, **options)


def test_compiled_option_is_retired_with_a_warning_and_changes_nothing() -> None:
    torch.manual_seed(0)
    block = create_block("local", 8, num_heads=2, kernel_size=3)
    with pytest.warns(FutureWarning, match="compiled=True is retired"):
        retired = create_block("local", 8, num_heads=2, kernel_size=3, compiled=True)
    retired.load_state_dict(block.state_dict())
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(retired(x), block(x))


def test_unknown_backend_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"backend 'cuda' is not valid; choose one of \['native', 'reference', 'flex'\]"
    ):
        create_block("local", 8, num_heads=2, backend="cuda")


def test_local_attention_trains_under_bf16_autocast() -> None:
    """The custom backward runs outside autocast; bf16 activations and fp32 embeddings must still meet."""
    block = create_block("local", 16, kernel_size=3, num_heads=2)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    out.float().sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert all(parameter.grad is not None for parameter in block.parameters() if parameter.requires_grad)
