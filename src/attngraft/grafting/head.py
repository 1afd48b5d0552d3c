"""Head mode: the "ResNet18 |> attention" design — a small ViT on a stage's feature map.

The map is patch-embedded with ``Conv2d(kernel_size=patch_size, stride=patch_size)``, a class token and learned
positions are added, ``depth`` pre-norm encoder layers mix the tokens with any registered token block, and a linear
layer classifies the class token. It is :class:`~attngraft.models.vit.VisionTransformer` with the map as its image.
The backbone stops at the stage; its modules after the stage (and its classifier) are dropped.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torchvision.ops import Permute

from attngraft.blocks import BLOCKS, list_blocks
from attngraft.blocks.factory import block_options, check_options
from attngraft.errors import SpecError, UnknownNameError
from attngraft.grafting.backbone import evaluating, forward_until, take_submodule, used_module_names, within
from attngraft.grafting.blocks import describe_map
from attngraft.grafting.grafts import Head
from attngraft.grafting.model import GraftedModel, GraftRecord
from attngraft.models.vit import VisionTransformer

logger = logging.getLogger(__name__)

# Options of the ViT head itself (beyond Head's fields); its token block's options are valid too.
HEAD_OPTIONS = ("mlp_ratio", "drop_rate", "drop_path_rate", "layer_scale")
# Block options the head sets itself (num_heads is a field of Head).
_SET_BY_HEAD = ("num_heads",)


class SingleTokenWarning(UserWarning):
    """A head over a 1×1 map: its attention mixes one token (and the class token), so it attends over nothing."""


def head_options(block_name: str) -> list[str] | None:
    """The options a head with token block ``block_name`` takes beyond Head's fields; None: any (``**kwargs``)."""
    block = block_options(block_name)
    if block is None:
        return None
    return sorted({*HEAD_OPTIONS, *(option for option in block if option not in _SET_BY_HEAD)})


def attach_head(
    model: GraftedModel,
    head: Head,
    stage: str,
    features: torch.Tensor,
    sample: torch.Tensor,
    *,
    num_classes: int,
    channels_last: bool = False,
) -> None:
    """Puts a ViT head with ``head.block`` token mixers on ``stage`` (probed output ``features`` for ``sample``).

    Args:
        model: The grafted model; gets ``grafts["head"]`` and stops its forward at ``stage``.
        head: The graft (block, patch size, depth, width, heads, more options).
        stage: The backbone module the head reads (``head.stage`` or the chosen default).
        features: The stage's probed output, (1, C, H, W), or (1, H, W, C) with ``channels_last``.
        sample: The probe input that gave ``features``.
        num_classes: Outputs of the head.
        channels_last: Whether the stage gives (B, H, W, C) maps (the head then permutes them first).

    Raises:
        SpecError: For a map block, unknown options (listing the valid ones), a non-square map, a patch size that
            does not tile the map, invalid options, or a backbone whose forward does not reach ``stage`` by running
            its modules in order.
    """
    channels_first = features.permute(0, 3, 1, 2) if channels_last else features  # (1, C, H, W)
    layout = ", channels-last" if channels_last else ""
    where = f"head {head.block} on {stage} ({describe_map(channels_first)}{layout})"
    _check_block(where, head)
    if channels_first.ndim != 4 or channels_first.shape[2] != channels_first.shape[3]:
        raise SpecError(f"{where}: the head needs a square (B, C, H, W) map")
    side = channels_first.shape[2]
    if side % head.patch_size:
        raise SpecError(f"{where}: patch_size {head.patch_size} does not divide the map's side {side}")
    if side == 1:
        message = f"{where}: the map is 1×1, so the head attends over a single token; choose an earlier stage"
        warnings.warn(message, SingleTokenWarning, stacklevel=4)
        model.notes.append(message)
    truncated, expected = _truncated_output(model, stage, sample), features
    if truncated is not None and channels_last and _same(truncated, channels_first):
        channels_last, expected = False, channels_first  # timm's forward_intermediates gives NCHW maps
    elif truncated is None or not _same(truncated, features):
        raise SpecError(
            f"{where}: running {type(model.backbone).__name__}'s modules in order up to {stage} does not reproduce "
            "its forward there, so a head cannot stop at that stage (insert and replace grafts still work)"
        )
    try:
        vit = VisionTransformer(
            num_classes=num_classes,
            in_chans=channels_first.shape[1],
            img_size=side,
            patch_size=head.patch_size,
            embed_dim=head.embed_dim,
            depth=head.depth,
            num_heads=head.num_heads,
            mixer=head.block,
            stem=Permute([0, 3, 1, 2]) if channels_last else None,  # (B, H, W, C) → (B, C, H, W)
            **head.options,
        )
    except (ValueError, TypeError) as error:
        raise SpecError(f"{where}: {error}") from None
    model.grafts["head"] = vit.to(features.device)
    model.head_stage = stage
    model.head_modules = used_module_names(model.backbone, stage)
    tokens = (side // head.patch_size) ** 2
    detail = f"{describe_map(channels_first)}{layout} → {tokens} tokens of {head.embed_dim}, depth {head.depth}"
    model.records.append(GraftRecord("head", head.block, stage, ("grafts.head",), detail))
    _drop_unused(model, stage, sample, expected)


def _check_block(where: str, head: Head) -> None:
    """A registered token block, and options the head or that block take."""
    try:
        block = BLOCKS.get(head.block)
    except UnknownNameError as error:
        raise SpecError(f"{where}: {error}") from None
    if block.layout != "tokens":
        raise SpecError(f"{where}: {head.block} takes maps; a head mixes tokens: {list_blocks(layout='tokens')}")
    valid = head_options(head.block)
    if valid is not None:
        try:
            check_options(f"a head with {head.block!r}", head.options, valid)
        except TypeError as error:
            raise SpecError(f"{where}: {error} (besides patch_size, depth, embed_dim, num_heads)") from None


def _truncated_output(model: GraftedModel, stage: str, sample: torch.Tensor) -> torch.Tensor | None:
    """What stopping the forward at ``stage`` gives for ``sample``, or None if that fails."""
    try:
        with evaluating(model.backbone) as backbone:
            return forward_until(backbone, stage, sample)
    except Exception:  # any failure means the truncated forward is not usable (e.g. auxiliary heads run)
        return None


def _same(truncated: torch.Tensor, features: torch.Tensor) -> bool:
    return truncated.shape == features.shape and torch.allclose(truncated, features, rtol=1e-4, atol=1e-5)


def _truncation_matches(model: GraftedModel, stage: str, sample: torch.Tensor, features: torch.Tensor) -> bool:
    """Whether stopping the forward at ``stage`` gives what the full forward gives there."""
    truncated = _truncated_output(model, stage, sample)
    return truncated is not None and _same(truncated, features)


def _drop_unused(model: GraftedModel, stage: str, sample: torch.Tensor, features: torch.Tensor) -> None:
    """Replaces the backbone's modules that the truncated forward never runs (later stages, classifier).

    If the truncated forward then no longer works (a model that indexes a container it only partly runs, as timm's
    ``forward_intermediates`` does), everything is put back and only the parameter counts say more than they run.
    """
    dropped = []

    def visit(module: torch.nn.Module, prefix: str) -> None:
        for name, child in list(module.named_children()):
            qualified = f"{prefix}{name}"
            if qualified in model.head_modules:
                visit(child, f"{qualified}.")
            elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                model.removed[qualified] = take_submodule(model.backbone, qualified, torch.nn.Identity())
                dropped.append(qualified)

    visit(model.backbone, "")
    if not _truncation_matches(model, stage, sample, features):
        for name in reversed(dropped):
            take_submodule(model.backbone, name, model.removed.pop(name))
        model.notes.append(
            f"kept the backbone modules after {stage}: this model's truncated forward still indexes them"
        )
        return
    model.dropped.extend(dropped)
    # A re-initialised classifier that is now dropped no longer needs to stay trainable.
    model.new_modules = [name for name in model.new_modules if not within(name, dropped)]
    if dropped:
        count = sum(parameter.numel() for name in dropped for parameter in model.removed[name].parameters())
        model.notes.append(
            f"dropped backbone modules the head never runs: {', '.join(dropped)} ({count / 1e6:.2f} M params)"
        )
