"""attngraft: add attention to vision models, graft it onto pretrained CNNs, train only what is new.

The public names below are imported on first use (PEP 562), so ``import attngraft`` (and the ``attngraft``
command's ``--help``) does not pay for torch, timm or torchvision until a name that needs them is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these on first use
    __version__: str
    from attngraft.blocks import create_block, list_blocks, record_attention
    from attngraft.grafting import Head, Insert, Replace, build, graft
    from attngraft.models import create_model, list_models
    from attngraft.saving import load, save
    from attngraft.train import ImageClassifier

# Public name -> the submodule that defines it. A new public name is one line here, one in the TYPE_CHECKING
# block above and one in __all__ (tests/test_package.py checks that the three agree).
_LAZY: dict[str, str] = {
    "Head": "attngraft.grafting",
    "ImageClassifier": "attngraft.train",
    "Insert": "attngraft.grafting",
    "Replace": "attngraft.grafting",
    "build": "attngraft.grafting",
    "create_block": "attngraft.blocks",
    "create_model": "attngraft.models",
    "graft": "attngraft.grafting",
    "list_blocks": "attngraft.blocks",
    "list_models": "attngraft.models",
    "load": "attngraft.saving",
    "record_attention": "attngraft.blocks",
    "save": "attngraft.saving",
}

__all__ = [
    "Head",
    "ImageClassifier",
    "Insert",
    "Replace",
    "__version__",
    "build",
    "create_block",
    "create_model",
    "graft",
    "list_blocks",
    "list_models",
    "load",
    "record_attention",
    "save",
]


def _version() -> str:
    """The installed distribution's version (``importlib.metadata`` alone takes ~0.1 s to import, so on demand)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("attngraft")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Imports a public name's submodule on first access and caches the name in the package namespace."""
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
