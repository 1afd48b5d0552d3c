"""Weights from other libraries into attngraft's models, checked key by key.

:func:`load_foreign_weights` maps a foreign state dict onto an attngraft model built with matching options and
loads it, refusing (naming the keys) any missing, unexpected or mis-shaped tensor. Sources:

- ``"vit_pytorch"``: vit-pytorch ≥ 1.0's ``ViT`` (``vit_pytorch.vit.ViT``) into ``create_model("vit",
  patch_embed="linear", qkv_bias=False, norm_eps=1e-5, dim_head=..., mlp_dim=..., pool=...)`` — the same
  computation: logits agree to float32 rounding (tested).
- ``"vit_pytorch"`` also: its ``DeepViT`` (``pool="cls"``) into ``create_model("deepvit", norm="layer", ...)``
  with the options above (its final LayerNorm, in its head, is per token: the same).
- ``"timm"``: timm's ``VisionTransformer`` and DeiT's ``VisionTransformerDistilled`` (class-token pooling, the
  default Conv2d patch embedding) into ``create_model("vit" | "deit", ...)`` with the same sizes (timm's LayerNorm
  epsilon, 1e-6, is the default), and timm's ``SwinTransformer`` into ``create_model("swin", ...)`` with the same
  sizes: logits agree to float32 rounding (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from attngraft.models.swin import SwinTransformer
from attngraft.models.vit import VisionTransformer

StateDict = Mapping[str, torch.Tensor]


def _vit_pytorch_keys(state: StateDict) -> dict[str, torch.Tensor]:
    """vit-pytorch ``ViT`` keys → attngraft ``VisionTransformer`` keys (tensors reshaped where layouts differ)."""
    renamed: dict[str, torch.Tensor] = {}
    layer_parts = {
        "0.norm": "norm1", "0.to_qkv": "mixer.qkv", "0.to_out.0": "mixer.proj",
        "0.reattn_norm.1": "mixer.mix_norm", "1.net.0": "norm2", "1.net.1": "mlp.fc1", "1.net.4": "mlp.fc2",
    }  # fmt: skip
    fixed = {
        "to_patch_embedding.1": "patch_embed.norm_in", "to_patch_embedding.2": "patch_embed.proj",
        "to_patch_embedding.3": "patch_embed.norm_out", "transformer.norm": "norm", "mlp_head": "head",
        "mlp_head.0": "norm", "mlp_head.1": "head",  # DeepViT: its final norm sits in the head
    }  # fmt: skip
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        if key == "cls_token":
            renamed["cls_token"] = tensor.reshape(1, 1, -1) if tensor.numel() else tensor
        elif key == "pos_embedding":
            renamed["pos_embed"] = tensor.reshape(1, -1, tensor.shape[-1])  # (1, tokens, dim)
        elif leaf == "reattn_weights":  # DeepViT's head mixing Θ
            index = module.removeprefix("transformer.layers.").partition(".")[0]
            renamed[f"layers.{index}.mixer.head_mixing"] = tensor
        elif module in fixed:
            renamed[f"{fixed[module]}.{leaf}"] = tensor
        elif module.startswith("transformer.layers."):
            index, _, part = module.removeprefix("transformer.layers.").partition(".")
            renamed[f"layers.{index}.{layer_parts.get(part, part)}.{leaf}"] = tensor
        else:
            renamed[key] = tensor  # reported as unexpected below
    if "cls_token" in renamed and renamed["cls_token"].numel() == 0:
        del renamed["cls_token"]  # pool="mean": vit-pytorch keeps an empty (0, dim) class token
    return renamed


def _timm_vit_keys(state: StateDict) -> dict[str, torch.Tensor]:
    """Keys of timm's ``VisionTransformer`` (and DeiT's ``VisionTransformerDistilled``) → attngraft's."""
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("blocks."):
            index, _, rest = key.removeprefix("blocks.").partition(".")
            key = f"layers.{index}.{rest.replace('attn.', 'mixer.', 1)}"
        elif key.startswith("patch_embed.proj."):
            key = key.replace("patch_embed.proj.", "patch_embed.", 1)
        renamed[key] = tensor
    return renamed


SWIN_BLOCK_PARTS = {"attn.relative_position_bias_table": "attention.relative_bias_table", "attn.": "attention."}


def _timm_swin_keys(state: StateDict) -> dict[str, torch.Tensor]:
    """Keys of timm's ``SwinTransformer`` → attngraft's.

    attngraft's ``stages`` run the patch mergings and the layers in one sequence (stage s > 0 starts with its
    merging).
    """
    stages = sorted({int(key.split(".")[1]) for key in state if key.startswith("layers.")})
    position: dict[tuple[int, str], int] = {}
    index = 0
    for stage in stages:
        if any(key.startswith(f"layers.{stage}.downsample.") for key in state):
            position[stage, "downsample"] = index
            index += 1
        blocks = sorted({int(key.split(".")[3]) for key in state if key.startswith(f"layers.{stage}.blocks.")})
        for block in blocks:
            position[stage, f"blocks.{block}"] = index
            index += 1
    fixed = {"patch_embed.proj.": "patch_embed.", "patch_embed.norm.": "patch_norm.", "head.fc.": "head."}
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = key
        if key.startswith("layers."):
            _, stage_index, part, *rest = key.split(".")
            owner = (int(stage_index), part if part == "downsample" else f"{part}.{rest.pop(0)}")
            leaf = ".".join(rest)
            for old, replacement in SWIN_BLOCK_PARTS.items():
                if leaf.startswith(old):
                    leaf = replacement + leaf.removeprefix(old)
                    break
            new = f"stages.{position[owner]}.{leaf}"
        else:
            new = next(
                (replacement + key.removeprefix(old) for old, replacement in fixed.items() if key.startswith(old)), key
            )
        renamed[new] = tensor
    return renamed


Renamer = Callable[[StateDict], dict[str, torch.Tensor]]
# Per source, the attngraft model classes its weights load into and the key map of each.
SOURCES: dict[str, dict[type[nn.Module], Renamer]] = {
    "vit_pytorch": {VisionTransformer: _vit_pytorch_keys},
    "timm": {VisionTransformer: _timm_vit_keys, SwinTransformer: _timm_swin_keys},
}


def load_foreign_weights(model: nn.Module, state_dict: StateDict, source: str) -> list[str]:
    """Loads ``state_dict`` from library ``source`` into ``model``; returns the model's keys that were loaded.

    Args:
        model: An attngraft model built with the options that match the source model (see the module docstring).
        state_dict: The source model's ``state_dict()`` (e.g. ``torch.load(path, weights_only=True)``).
        source: One of :data:`SOURCES`.

    Raises:
        ValueError: An unknown source, a model of another class, or keys that are missing, unexpected or of
            another shape (each named with both shapes).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}; valid: {list(SOURCES)}")
    renamers = SOURCES[source]
    rename = next((renamer for cls, renamer in renamers.items() if isinstance(model, cls)), None)
    if rename is None:
        classes = " or ".join(cls.__name__ for cls in renamers)
        raise ValueError(f"{source} weights load into a {classes}, not a {type(model).__name__}")
    renamed = rename(state_dict)
    own = model.state_dict()
    problems = [f"missing {key} {tuple(own[key].shape)}" for key in own if key not in renamed]
    problems += [f"unexpected {key} {tuple(tensor.shape)}" for key, tensor in renamed.items() if key not in own]
    problems += [
        f"{key}: {tuple(tensor.shape)} in the weights, {tuple(own[key].shape)} in the model"
        for key, tensor in renamed.items()
        if key in own and tensor.shape != own[key].shape
    ]
    if problems:
        raise ValueError(
            f"{source} weights do not fit this {type(model).__name__} (build it with the source's options): "
            + "; ".join(problems[:8])
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        )
    model.load_state_dict(renamed, strict=True)
    return list(renamed)


def _refuse(peer: Any, option: str, found: object, needed: str) -> ValueError:
    return ValueError(f"cannot convert this {type(peer).__name__}: {option}={found!r} ({needed})")


def _timm_vit_options(peer: Any) -> tuple[str, dict[str, Any]]:
    """The ``create_model`` name and options of a timm ``VisionTransformer`` (or DeiT's distilled one)."""
    checks = {
        "global_pool": (getattr(peer, "global_pool", None), "token", "attngraft classifies the class token"),
        "num_reg_tokens": (getattr(peer, "num_reg_tokens", 0), 0, "no register tokens"),
        "no_embed_class": (getattr(peer, "no_embed_class", False), False, "class token inside the positions"),
    }
    for option, (found, needed, why) in checks.items():
        if found != needed:
            raise _refuse(peer, option, found, f"attngraft supports {needed!r}: {why}")
    first = peer.blocks[0]
    for option, module in {"norm_pre": peer.norm_pre, "fc_norm": peer.fc_norm, "init_values": first.ls1,
                           "qk_norm": first.attn.q_norm}.items():  # fmt: skip
        if not isinstance(module, nn.Identity):
            raise _refuse(peer, option, type(module).__name__, "attngraft's ViT has none")
    patch = peer.patch_embed
    name = "deit" if getattr(peer, "dist_token", None) is not None else "vit"
    return name, {
        "num_classes": peer.num_classes, "in_chans": patch.proj.in_channels, "img_size": tuple(patch.img_size),
        "patch_size": tuple(patch.patch_size), "embed_dim": patch.proj.out_channels, "depth": len(peer.blocks),
        "num_heads": first.attn.num_heads, "mlp_dim": first.mlp.fc1.out_features, "norm_eps": peer.norm.eps,
        "qkv_bias": first.attn.qkv.bias is not None,
    }  # fmt: skip


def _timm_swin_options(peer: Any) -> tuple[str, dict[str, Any]]:
    """The ``create_model`` name and options of a timm ``SwinTransformer``."""
    patch = peer.patch_embed
    if patch.img_size[0] != patch.img_size[1] or patch.patch_size[0] != patch.patch_size[1]:
        raise _refuse(peer, "img_size", tuple(patch.img_size), "attngraft's Swin takes square images and patches")
    stages = list(peer.layers)
    block = stages[0].blocks[0]
    return "swin", {
        "num_classes": peer.num_classes, "in_chans": patch.proj.in_channels, "img_size": patch.img_size[0],
        "patch_size": patch.patch_size[0], "embed_dim": patch.proj.out_channels,
        "depths": tuple(len(stage.blocks) for stage in stages),
        "num_heads": tuple(stage.blocks[0].attn.num_heads for stage in stages),
        "window_size": block.window_size[0], "mlp_ratio": block.mlp.fc1.out_features / block.mlp.fc1.in_features,
    }  # fmt: skip


def _vit_pytorch_options(peer: Any, image_size: int | tuple[int, int] | None) -> tuple[str, dict[str, Any]]:
    """The ``create_model`` name and options of a vit-pytorch ``ViT`` or ``DeepViT``."""
    deep = type(peer).__name__ == "DeepViT"
    if deep and peer.pool != "cls":
        raise _refuse(peer, "pool", peer.pool, "DeepViT's mean pools before its final norm; attngraft after")
    embed = peer.to_patch_embedding
    linear, layers = embed[2], peer.transformer.layers
    attention, heads = layers[0][0], layers[0][0].heads
    dim_head = attention.to_qkv.out_features // 3 // heads
    if not deep and isinstance(attention.to_out, nn.Identity):
        raise _refuse(peer, "heads", heads, "one head as wide as the model has no output projection in vit-pytorch")
    positions = peer.pos_embedding.reshape(-1, linear.out_features).shape[0]
    prefix = 1 if deep or peer.pool == "cls" else 0
    lengths = dict(getattr(embed[0], "axes_lengths", {}))  # the einops Rearrange that cuts the patches
    patch = (int(lengths["p1"]), int(lengths["p2"]))
    if image_size is None:
        side = round((positions - prefix) ** 0.5)
        if side * side != positions - prefix:
            raise ValueError(f"cannot infer the image size of this {type(peer).__name__}: pass image_size=")
        image_size = (side * patch[0], side * patch[1])
    sides = (image_size, image_size) if isinstance(image_size, int) else image_size
    channels = linear.in_features // (patch[0] * patch[1])
    head = peer.mlp_head[-1] if deep else peer.mlp_head
    if head is None:
        raise _refuse(peer, "num_classes", 0, "attngraft's ViTs have a classifier")
    return "deepvit" if deep else "vit", {
        "num_classes": head.out_features, "in_chans": channels, "img_size": sides, "patch_size": patch,
        "embed_dim": linear.out_features, "depth": len(layers), "num_heads": heads, "dim_head": dim_head,
        "mlp_dim": layers[0][1].net[1].out_features, "pool": "cls" if deep else peer.pool, "patch_embed": "linear",
        "qkv_bias": False, "norm_eps": embed[1].eps, "pos_table_size": positions,
        **({"norm": "layer"} if deep else {}),
    }  # fmt: skip


def convert(peer: nn.Module, *, image_size: int | tuple[int, int] | None = None) -> nn.Module:
    """The attngraft model equal to ``peer``: its configuration read from the instance, its weights copied.

    Peers: timm ``VisionTransformer`` (DeiT's distilled one included) and ``SwinTransformer``; vit-pytorch ``ViT``
    and ``DeepViT``.

    Args:
        peer: The model to convert.
        image_size: vit-pytorch models only, when their position table does not say it (not square, or oversized
            as in the seed's models): the images' (height, width) or side.

    Raises:
        ValueError: A peer of another kind, or a configuration attngraft cannot express (the option named).
    """
    from attngraft.models.factory import create_model

    kind = f"{type(peer).__module__}.{type(peer).__name__}"
    if kind.startswith("timm.") and hasattr(peer, "blocks"):
        (name, options), source = _timm_vit_options(peer), "timm"
    elif kind.startswith("timm.") and type(peer).__name__ == "SwinTransformer":
        (name, options), source = _timm_swin_options(peer), "timm"
    elif kind.startswith("vit_pytorch.") and type(peer).__name__ in ("ViT", "DeepViT"):
        (name, options), source = _vit_pytorch_options(peer, image_size), "vit_pytorch"
    else:
        raise ValueError(
            f"cannot convert a {kind}: convert takes timm's VisionTransformer and SwinTransformer and vit-pytorch's "
            "ViT and DeepViT"
        )
    model = create_model(name, **options)
    load_foreign_weights(model, peer.state_dict(), source)
    return model
