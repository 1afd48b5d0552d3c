"""The block registry: ``create_block(name, dim, **kwargs)``, ``list_blocks()`` and ``block_options()``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from attngraft.blocks._ops import Block
from attngraft.errors import UnknownOptionError
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


def block_options(name: str) -> tuple[str, ...] | None:
    """The keyword options block ``name`` takes besides ``dim``, or None when it takes any (``**kwargs``).

    Raises:
        UnknownNameError: For an unknown name, listing the valid ones.
    """
    parameters = list(inspect.signature(BLOCKS.get(name).__init__).parameters.values())[2:]  # after self, dim
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(parameter.name for parameter in parameters if parameter.kind in keyword_kinds)


def check_options(owner: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raises :class:`UnknownOptionError` for the first of ``given`` not in ``valid``, with a close match.

    Args:
        owner: What takes the options, for the message (e.g. "block 'mhsa'").
        given: The option names passed.
        valid: The option names ``owner`` takes.
    """
    valid = sorted(valid)
    for option in given:
        if option not in valid:
            close = difflib.get_close_matches(option, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownOptionError(f"{owner} has no option {option!r}{hint}; valid options: {valid}")


def create_block(name: str, dim: int, **kwargs: Any) -> Block:
    """Builds the block registered as ``name`` with channel dim ``dim`` and keyword options.

    Raises:
        UnknownNameError: For an unknown name, listing the valid ones.
        UnknownOptionError: For an option the block does not take (a ``TypeError``), listing the valid ones.
        ValueError: For invalid option values (named by the block).
    """
    valid = block_options(name)
    if valid is not None:
        check_options(f"block {name!r}", kwargs, valid)
    return BLOCKS.get(name)(dim, **kwargs)


def list_blocks(pattern: str | None = None, layout: str | None = None) -> list[str]:
    """Registered block names, optionally filtered by glob ``pattern`` and input ``layout`` ("tokens" or "map")."""
    return [name for name in BLOCKS.names(pattern) if layout is None or BLOCKS.get(name).layout == layout]
