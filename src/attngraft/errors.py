"""Exception types shared by every room of attngraft.

User errors (a bad name, missing data, a corrupt file) derive from :class:`AttngraftError`; the CLI turns them
into a one-line message and exit code 2. They also derive from the matching builtin (``ValueError``,
``FileNotFoundError``) so callers can catch them the usual way.
"""

from __future__ import annotations


class AttngraftError(Exception):
    """Base class of errors caused by user input rather than by a bug."""


class UnknownNameError(AttngraftError, ValueError):
    """A name (block, model, dataset, ...) that no registry knows."""


class DataNotFoundError(AttngraftError, FileNotFoundError):
    """A dataset whose files could not be found in any searched location."""


class CorruptDataError(AttngraftError, ValueError):
    """A data file that exists but is truncated, corrupt or in the wrong format."""


class SpecError(AttngraftError, ValueError):
    """A graft spec (dict or YAML) with a missing, unknown or ill-fitting entry."""


class UnknownOptionError(AttngraftError, TypeError):
    """A keyword option that a block (or a head) does not take; the message lists the valid options."""


class WeightsError(AttngraftError, ValueError):
    """A weights file that cannot be loaded safely, or whose keys or shapes do not fit the model."""


class WeightsNotFoundError(AttngraftError, FileNotFoundError):
    """Weights that are neither at the given path nor in any local cache (and downloading is off)."""


class SavedModelError(AttngraftError, ValueError):
    """A model that ``attngraft.save`` cannot describe, or a saved-model directory that cannot be written or read."""


class ExportError(AttngraftError, RuntimeError):
    """An export whose file does not reproduce the eager model, or that needs a package that is not installed."""


class ConfigError(AttngraftError, ValueError):
    """A training configuration value that is invalid; the message names its key (e.g. ``model.lr``)."""


class TrainingError(AttngraftError, RuntimeError):
    """Training that cannot go on, e.g. a non-finite loss; the message says where and what was kept."""


class DiskFullError(AttngraftError, OSError):
    """A write that ran out of space (or quota); the message names the file, and the previous one is intact."""
