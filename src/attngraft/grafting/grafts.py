"""Grafts as typed values — ``Head``, ``Insert``, ``Replace`` — beside the dict/YAML form, parsed in one place.

``as_graft`` turns a dict entry (``{"mode": "insert", "block": "non_local", "after": "layer3"}``) or a value into
the value; ``to_dict()`` gives the dict form back, so a spec built from values round-trips::

    Insert("non_local", after="layer3") == as_graft(Insert("non_local", after="layer3").to_dict())

Keys a mode does not name go to the block (for a head: to the ViT head and its token mixer) and are kept in
``options``. A block option whose name clashes with the entry's own keys (``non_local``'s ``mode``) goes under a
nested ``options`` mapping in the dict form.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from attngraft.errors import SpecError

DEFAULT_EMBED_DIM = 256
# Keys of a dict entry besides the mode's fields: a block option with one of these names goes under "options".
RESERVED_KEYS = ("mode", "options")


def _positive_int(where: str, name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def _name(where: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: {key} must be a module or block name (a non-empty string), got {value!r}")
    return value


def _names(where: str, key: str, value: object) -> tuple[str, ...]:
    """A name or a non-empty list of names, as a tuple."""
    if isinstance(value, str):
        return (_name(where, key, value),)
    if not isinstance(value, Sequence) or not value:
        raise SpecError(f"{where}: {key} must be a module name or a non-empty list of them, got {value!r}")
    return tuple(_name(where, key, item) for item in value)


class Options(Mapping[str, Any]):
    """A read-only mapping of block options (unlike ``MappingProxyType``, it pickles and deep-copies)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)

    def __getitem__(self, key: str) -> Any:
        return self._options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __repr__(self) -> str:
        return repr(self._options)


def _frozen_options(where: str, options: Mapping[str, Any]) -> Options:
    for key in options:
        if not isinstance(key, str):
            raise SpecError(f"{where}: option names must be strings, got {key!r}")
    return Options(options)


class _Graft:
    """Shared behaviour of the three graft values: the dict form."""

    mode: ClassVar[str]
    block: str
    options: Mapping[str, Any]

    def fields(self) -> dict[str, Any]:
        """The mode's own fields in their dict (YAML) form."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The entry as in a spec's ``graft`` list (plain dicts, lists and scalars, YAML-safe)."""
        entry: dict[str, Any] = {"mode": self.mode, **self.fields()}
        nested = {key: value for key, value in self.options.items() if key in RESERVED_KEYS or key in entry}
        entry.update({key: value for key, value in self.options.items() if key not in nested})
        if nested:
            entry["options"] = nested
        return entry

    def __repr__(self) -> str:
        fields = self.fields()
        arguments = [repr(fields.pop("block")), *(f"{key}={value!r}" for key, value in fields.items())]
        arguments += [f"{key}={value!r}" for key, value in self.options.items()]
        return f"{type(self).__name__}({', '.join(arguments)})"


@dataclass(frozen=True, init=False, eq=True, repr=False)
class Head(_Graft):
    """A ViT head on a stage's map: ``Head("graph", stage="layer4", num_heads=4)``.

    Attributes:
        block: Registered token block that mixes the head's tokens.
        stage: Backbone module whose map the head reads; None: the last stage whose map is at least 2×2.
        patch_size: Side of the patches cut from the map.
        depth: Encoder layers.
        embed_dim: Token width.
        num_heads: Attention heads of each layer.
        options: More options of the head (``mlp_ratio``, ``drop_rate``, ``drop_path_rate``, ``layer_scale``) or of
            its token block.
    """

    mode: ClassVar[str] = "head"
    block: str
    stage: str | None = None
    patch_size: int = 1
    depth: int = 1
    embed_dim: int = DEFAULT_EMBED_DIM
    num_heads: int = 4
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # may hold lists: compared, not hashed

    def __init__(
        self,
        block: str,
        stage: str | None = None,
        *,
        patch_size: int = 1,
        depth: int = 1,
        embed_dim: int = DEFAULT_EMBED_DIM,
        num_heads: int = 4,
        **options: Any,
    ) -> None:
        where = f"head {block}"
        object.__setattr__(self, "block", _name("head", "block", block))
        object.__setattr__(self, "stage", None if stage is None else _name(where, "stage", stage))
        for key, value in (
            ("patch_size", patch_size),
            ("depth", depth),
            ("embed_dim", embed_dim),
            ("num_heads", num_heads),
        ):
            object.__setattr__(self, key, _positive_int(where, key, value))
        object.__setattr__(self, "options", _frozen_options(where, options))

    def fields(self) -> dict[str, Any]:  # noqa: D102
        return {
            "block": self.block,
            "stage": self.stage,
            "patch_size": self.patch_size,
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
        }


@dataclass(frozen=True, init=False, eq=True, repr=False)
class Insert(_Graft):
    """A map block after one or more modules, through a zero-initialised gate: ``Insert("se", after="layer3")``.

    Attributes:
        block: Registered map block.
        after: Module name, or a tuple of them (one block after each).
        options: The block's keyword options.
    """

    mode: ClassVar[str] = "insert"
    block: str
    after: str | tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # may hold lists: compared, not hashed

    def __init__(self, block: str, after: str | Sequence[str], **options: Any) -> None:
        where = f"insert {block}"
        object.__setattr__(self, "block", _name("insert", "block", block))
        names = _names(where, "after", after)
        object.__setattr__(self, "after", after if isinstance(after, str) else names)
        object.__setattr__(self, "options", _frozen_options(where, options))

    @property
    def locations(self) -> tuple[str, ...]:
        """The modules a block goes after."""
        return (self.after,) if isinstance(self.after, str) else self.after

    def fields(self) -> dict[str, Any]:  # noqa: D102
        return {"block": self.block, "after": self.after if isinstance(self.after, str) else list(self.after)}


@dataclass(frozen=True, init=False, eq=True, repr=False)
class Replace(_Graft):
    """The 3×3 convolutions of stages replaced by a block: ``Replace(stages=["layer4"], kernel_size=7)``.

    Attributes:
        block: Registered block that can stand in for a convolution (``local``).
        stages: Backbone modules whose convolutions are replaced.
        options: The block's keyword options.
    """

    mode: ClassVar[str] = "replace"
    block: str
    stages: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # may hold lists: compared, not hashed

    def __init__(self, block: str = "local", *, stages: str | Sequence[str], **options: Any) -> None:
        where = f"replace {block}"
        object.__setattr__(self, "block", _name("replace", "block", block))
        object.__setattr__(self, "stages", _names(where, "stages", stages))
        object.__setattr__(self, "options", _frozen_options(where, options))

    def fields(self) -> dict[str, Any]:  # noqa: D102
        return {"block": self.block, "stages": list(self.stages)}


Graft = Head | Insert | Replace
GRAFT_TYPES: dict[str, type[Head] | type[Insert] | type[Replace]] = {"head": Head, "insert": Insert, "replace": Replace}
# Keys a dict entry of each mode must have.
REQUIRED_KEYS = {"head": ("block",), "insert": ("block", "after"), "replace": ("stages",)}


def as_graft(entry: object, index: int = 0) -> Graft:
    """The typed value of a graft entry: a ``Head``/``Insert``/``Replace`` as is, or a dict parsed.

    Args:
        entry: The value or its dict form (``mode`` plus the mode's keys; other keys are options).
        index: Position in the graft list, for messages (``graft[1] (insert): ...``).

    Raises:
        SpecError: For a non-mapping, an unknown mode, missing keys or ill-typed fields, naming the entry.
    """
    if isinstance(entry, Head | Insert | Replace):
        return entry
    if not isinstance(entry, Mapping) or not isinstance(entry.get("mode"), str) or entry["mode"] not in GRAFT_TYPES:
        raise SpecError(
            f"graft[{index}] must be a Head/Insert/Replace or a mapping with mode one of {list(GRAFT_TYPES)}, "
            f"got {entry!r}"
        )
    mode = entry["mode"]
    missing = [key for key in REQUIRED_KEYS[mode] if key not in entry]
    if missing:
        raise SpecError(f"graft[{index}] ({mode}) is missing {missing}")
    keys = {key: value for key, value in entry.items() if key not in RESERVED_KEYS}
    nested = entry.get("options") or {}
    if not isinstance(nested, Mapping):
        raise SpecError(f"graft[{index}] ({mode}): options must be a mapping of block options, got {nested!r}")
    twice = sorted(set(nested) & set(keys))
    if twice:
        raise SpecError(f"graft[{index}] ({mode}): {twice} given both as keys and under options")
    try:
        return GRAFT_TYPES[mode](**keys, **nested)
    except SpecError as error:
        raise SpecError(f"graft[{index}] ({mode}): {error}") from None


def as_grafts(entries: object) -> list[Graft]:
    """The typed values of a ``graft`` list (see :func:`as_graft`); at most one head.

    Raises:
        SpecError: For a non-list, a malformed entry, or two heads.
    """
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise SpecError(f"graft must be a list of graft entries, got {type(entries).__name__}")
    grafts = [as_graft(entry, index) for index, entry in enumerate(entries)]
    if sum(isinstance(graft, Head) for graft in grafts) > 1:
        raise SpecError("a model takes at most one head graft")
    return grafts
