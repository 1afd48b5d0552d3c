"""Training with Lightning: the LightningModule, optimisation, frozen-feature caching and the CLI glue.

Heavy imports (Lightning's CLI) stay in :mod:`attngraft.train.cli`; import it only to run commands.
"""

from attngraft.train.cache import FeatureCache, FeatureDataset
from attngraft.train.callbacks import RandomState
from attngraft.train.checkpoint import TrainedCheckpoint, load_checkpoint, rebuild_network
from attngraft.train.module import ImageClassifier
from attngraft.train.network import build_network, describe_network
from attngraft.train.optim import OptimizerConfig, parameter_groups
from attngraft.train.trainer import create_trainer

__all__ = [
    "FeatureCache",
    "FeatureDataset",
    "ImageClassifier",
    "OptimizerConfig",
    "RandomState",
    "TrainedCheckpoint",
    "build_network",
    "create_trainer",
    "describe_network",
    "load_checkpoint",
    "parameter_groups",
    "rebuild_network",
]
