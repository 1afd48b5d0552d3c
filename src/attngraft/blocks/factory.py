"""The block registry: ``create_block(name, dim, **kwargs)`` and ``list_blocks()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from attngraft.blocks._ops import Block
from attngraft.registry import Registry

BlockType = TypeVar("BlockType", bound=type[Block])

BLOCKS: Registry[type[Block]] = Registry("block")


def register_block(name: str) -> Callable[[BlockType], BlockType]:
    """Class decorator registering a :class:`Block` subclass under ``name``."""

    def decorator(cls: BlockType) -> BlockType:
        if not getattr(cls, "layout", None) or not getattr(cls, "family", None):
            raise TypeError(f"block {cls.__name__} must set the class attributes 'layout' and 'family'")
        BLOCKS.add(name, cls)
        return cls

    return decorator


def create_block(name: str, dim: int, **kwargs: Any) -> Block:
    """Builds the block registered as ``name`` with channel dim ``dim`` and keyword options.

    Raises:
        UnknownNameError: For an unknown name, listing the valid ones.
        ValueError: For invalid options (named by the block).
        TypeError: For options the block does not take.
    """
    return BLOCKS.get(name)(dim, **kwargs)


def list_blocks(pattern: str | None = None, layout: str | None = None) -> list[str]:
    """Registered block names, optionally filtered by glob ``pattern`` and input ``layout`` ("tokens" or "map")."""
    return [name for name in BLOCKS.names(pattern) if layout is None or BLOCKS.get(name).layout == layout]
