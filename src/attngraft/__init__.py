"""attngraft: add attention to vision models, graft it onto pretrained CNNs, train only what is new."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attngraft")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

from attngraft.blocks import create_block, list_blocks, record_attention
from attngraft.grafting import build, graft
from attngraft.models import create_model, list_models
from attngraft.saving import load, save

__all__ = [
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
