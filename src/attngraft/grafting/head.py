"""Head mode: the "ResNet18 |> attention" design — a small ViT on a stage's feature map.

The map is patch-embedded with ``Conv2d(kernel_size=patch_size, stride=patch_size)``, a class token and learned
positions are added, ``depth`` pre-norm encoder layers mix the tokens with any registered token block, and a linear
layer classifies the class token. It is :class:`~attngraft.models.vit.VisionTransformer` with the map as its image.
The backbone stops at the stage; its modules after the stage (and its classifier) are dropped.
"""

from __future__ import annotations

from typing import Any

import torch

from attngraft.blocks import BLOCKS, list_blocks
from attngraft.errors import SpecError
from attngraft.grafting.backbone import evaluating, forward_until, set_submodule, used_module_names, within
from attngraft.grafting.blocks import describe_map
from attngraft.grafting.model import GraftedModel, GraftRecord
from attngraft.models.vit import VisionTransformer

DEFAULT_EMBED_DIM = 256


def attach_head(
    model: GraftedModel,
    block_name: str,
    stage: str,
    features: torch.Tensor,
    sample: torch.Tensor,
    *,
    num_classes: int,
    patch_size: int = 1,
    depth: int = 1,
    embed_dim: int = DEFAULT_EMBED_DIM,
    num_heads: int = 4,
    **options: Any,
) -> None:
    """Puts a ViT head with ``block_name`` token mixers on ``stage`` (probed output ``features`` for ``sample``).

    Raises:
        SpecError: For a map block, a non-square map, a patch size that does not tile the map, invalid options, or a
            backbone whose forward does not reach ``stage`` by running its modules in order.
    """
    where = f"head {block_name} on {stage} ({describe_map(features)})"
    if block_name in BLOCKS and BLOCKS.get(block_name).layout != "tokens":
        raise SpecError(f"{where}: {block_name} takes maps; a head mixes tokens: {list_blocks(layout='tokens')}")
    for option, value in (("patch_size", patch_size), ("depth", depth), ("embed_dim", embed_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{where}: {option} must be a positive integer, got {value!r}")
    if features.ndim != 4 or features.shape[2] != features.shape[3]:
        raise SpecError(f"{where}: the head needs a square (B, C, H, W) map")
    if features.shape[2] % patch_size:
        raise SpecError(f"{where}: patch_size {patch_size} does not divide the map's side {features.shape[2]}")
    if not _truncation_matches(model, stage, sample, features):
        raise SpecError(
            f"{where}: running {type(model.backbone).__name__}'s modules in order up to {stage} does not reproduce "
            "its forward there, so a head cannot stop at that stage (insert and replace grafts still work)"
        )
    try:
        head = VisionTransformer(
            num_classes=num_classes,
            in_chans=features.shape[1],
            img_size=features.shape[2],
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mixer=block_name,
            **options,
        )
    except (ValueError, TypeError) as error:
        raise SpecError(f"{where}: {error}") from None
    model.grafts["head"] = head.to(features.device)
    model.head_stage = stage
    model.head_modules = used_module_names(model.backbone, stage)
    tokens = (features.shape[2] // patch_size) ** 2
    detail = f"{describe_map(features)} → {tokens} tokens of {embed_dim}, depth {depth}"
    model.records.append(GraftRecord("head", block_name, stage, ("grafts.head",), detail))
    _drop_unused(model, stage, sample, features)


def _truncation_matches(model: GraftedModel, stage: str, sample: torch.Tensor, features: torch.Tensor) -> bool:
    """Whether stopping the forward at ``stage`` gives what the traced full forward gives there."""
    try:
        with evaluating(model.backbone) as backbone:
            truncated = forward_until(backbone, stage, sample)
    except Exception:  # any failure means the truncated forward is not usable (e.g. auxiliary heads run)
        return False
    return truncated.shape == features.shape and torch.allclose(truncated, features, rtol=1e-4, atol=1e-5)


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
                model.removed[qualified] = set_submodule(model.backbone, qualified, torch.nn.Identity())
                dropped.append(qualified)

    visit(model.backbone, "")
    if not _truncation_matches(model, stage, sample, features):
        for name in reversed(dropped):
            set_submodule(model.backbone, name, model.removed.pop(name))
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
