"""The contract every registered block keeps; parametrised over the registry, so new blocks are covered."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attngraft.blocks import BLOCKS, ResidualGate, create_block, list_blocks, record_attention
from attngraft.blocks.kernels import use_backend
from attngraft.errors import UnknownNameError

from .conftest import DIM, make_block, make_input, randomise_parameters


def test_every_block_declares_layout_and_family(block_name: str) -> None:
    cls = BLOCKS.get(block_name)
    assert cls.layout in ("tokens", "map")
    assert isinstance(cls.family, str)
    assert cls.family


def test_output_keeps_input_shape(block_name: str) -> None:
    block = make_block(block_name)
    x = make_input(block)
    assert block(x).shape == x.shape


def test_wrong_layout_names_expected_shape(block_name: str) -> None:
    block = make_block(block_name)
    wrong = torch.randn(2, DIM, 5, 5) if block.layout == "tokens" else torch.randn(2, 9, DIM)
    with pytest.raises(ValueError, match=r"expects (tokens \(B, N, C\)|map \(B, C, H, W\)) with C=32, got shape"):
        block(wrong)


def test_wrong_channels_rejected(block_name: str) -> None:
    block = make_block(block_name)
    x = make_input(block)
    wrong = x[..., :-1] if block.layout == "tokens" else x[:, :-1]
    with pytest.raises(ValueError, match="with C=32"):
        block(wrong)


def test_gradients_reach_every_parameter(block_name: str) -> None:
    block = make_block(block_name)
    randomise_parameters(block)
    x = make_input(block).requires_grad_()
    (block(x) * torch.randn_like(x)).sum().backward()
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, f"{block_name}: no gradient reaches {name}"
    assert x.grad is not None
    assert x.grad.abs().sum() > 0


def test_residual_gate_is_exact_identity_at_init(block_name: str) -> None:
    gated = ResidualGate.around(make_block(block_name))
    x = make_input(gated.block)
    assert torch.equal(gated(x), x)


def test_bfloat16(block_name: str) -> None:
    block = make_block(block_name)
    randomise_parameters(block)
    x = make_input(block)
    reference = block(x)
    out = block.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    relative_error = (out.float() - reference).norm() / reference.norm()
    assert relative_error < 0.03, f"{block_name}: bf16 relative error {relative_error:.3f}"


def test_recording_matches_fused_path_and_cleans_up(block_name: str) -> None:
    block = make_block(block_name).eval()
    randomise_parameters(block)
    x = make_input(block)
    fused = block(x)
    with record_attention(block) as records:
        recorded = block(x)
    torch.testing.assert_close(recorded, fused, atol=1e-5, rtol=1e-4)
    assert not block._forward_hooks
    for module in block.modules():
        assert not module._forward_hooks
        assert not getattr(module, "enabled", False)
    if block.family != "channel":
        assert records, f"{block_name} computes attention but recorded nothing"
    for tensors in records.values():
        assert len(tensors) == 1


def test_compile_matches_eager(block_name: str) -> None:
    block = make_block(block_name).eval()
    randomise_parameters(block)
    x = make_input(block)
    compiled = torch.compile(block, fullgraph=False)
    torch.testing.assert_close(compiled(x), block(x), atol=1e-5, rtol=1e-4)


def test_state_dict_round_trip(block_name: str) -> None:
    block = make_block(block_name).eval()
    randomise_parameters(block)
    copy = make_block(block_name).eval()
    copy.load_state_dict(block.state_dict())
    x = make_input(block)
    torch.testing.assert_close(copy(x), block(x))


def test_unknown_block_suggests_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'mhsa'"):
        create_block("mhsaa", 32)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="heads"):
        create_block("mhsa", 32, heads=4)


@pytest.mark.parametrize("name", ["mhsa", "graph", "reattention", "window"])
def test_heads_must_divide_dim(name: str) -> None:
    with pytest.raises(
        ValueError, match=r"dim=32 is not divisible by num_heads=5; valid num_heads: \[1, 2, 4, 8, 16, 32\]"
    ):
        create_block(name, 32, num_heads=5)


@pytest.mark.parametrize("dim", [0, -3, 2.5, True])
def test_dim_must_be_positive_integer(dim: object) -> None:
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        create_block("se", dim)  # type: ignore[arg-type]


def test_list_blocks_by_layout() -> None:
    tokens = list_blocks(layout="tokens")
    maps = list_blocks(layout="map")
    assert {"mhsa", "graph", "reattention"} <= set(tokens)
    assert {"non_local", "window", "se", "eca", "cbam"} <= set(maps)
    assert sorted(tokens + maps) == list_blocks()


class _Multiplies(TorchDispatchMode):
    """Counts the elements of every elementwise multiply (``mul``, ``pow``) dispatched under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mul, torch.ops.aten.pow):
            self.count += out.numel()
        return out


@pytest.mark.parametrize("name", [name for name in list_blocks() if BLOCKS.get(name).family == "local"])
def test_attention_flops_count_the_elementwise_multiply_adds_of_k_by_k_blocks(name: str) -> None:
    """``flop_counter`` cannot see elementwise attention: the block's own count must equal 2 × its multiplies.

    (Counted on the pure-PyTorch reference kernels, whose multiplies are aten operators.)
    """
    block = make_block(name).eval()
    x = make_input(block)
    with torch.no_grad(), use_backend("reference"), _Multiplies() as multiplies:
        block(x)
    assert block.attention_flops(x.shape) == 2 * multiplies.count > 0


def test_window_does_not_shift_a_map_that_fits_in_one_window() -> None:
    """As Swin and timm: with one window there is nothing to connect, and a shift would only scramble the bias."""
    torch.manual_seed(0)
    shifted = create_block("window", 16, num_heads=2, window_size=8, shift_size=4).eval()
    randomise_parameters(shifted)
    plain = create_block("window", 16, num_heads=2, window_size=8, shift_size=0).eval()
    plain.load_state_dict(shifted.state_dict())
    for size in ((8, 8), (5, 7)):
        x = torch.randn(2, 16, *size)
        torch.testing.assert_close(shifted(x), plain(x))
    wider = torch.randn(2, 16, 8, 12)  # two windows across: the shift matters
    assert not torch.allclose(shifted(wider), plain(wider))
