"""One small generic registry, used for datasets, blocks and models.

Example:
    >>> shapes: Registry[type] = Registry("shape")
    >>> @shapes.register("square")
    ... class Square: ...
    >>> shapes.get("square") is Square
    True
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from attngraft.errors import UnknownNameError

T = TypeVar("T")


def unknown_name_message(kind: str, name: object, valid: list[str], *, list_all: bool = True) -> str:
    """The message for an unknown name: the closest valid names and (when ``list_all``) every valid name."""
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(match) for match in close)}?" if close else ""
    plural = f"{kind[:-1]}ies" if kind.endswith("y") and kind[-2:-1] not in ("a", "e", "o", "u") else f"{kind}s"
    listing = f" Valid {plural}: {', '.join(valid) or '(none registered)'}" if list_all else ""
    return f"unknown {kind} {name!r}.{hint}{listing}"


class Registry(Generic[T]):
    """Maps names to objects (classes, factories or specs) of one kind.

    Args:
        kind: What the registry holds, used in error messages ("block", "model", "dataset").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Returns a decorator that registers its argument under ``name`` and returns it unchanged.

        Raises:
            ValueError: If ``name`` is already registered or is not a non-empty string.
        """

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Registers ``obj`` under ``name``; duplicates are rejected."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """Returns the object registered as ``name``.

        Raises:
            UnknownNameError: If no such name; the message lists close matches and all valid names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self._unknown_message(name)) from None

    def names(self, pattern: str | None = None) -> list[str]:
        """Returns the registered names in sorted order, filtered by an optional glob ``pattern``."""
        names = sorted(self._entries)
        if pattern is None:
            return names
        return [name for name in names if fnmatch.fnmatchcase(name, pattern)]

    def _unknown_message(self, name: object) -> str:
        return unknown_name_message(self.kind, name, self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
