"""ImageClassifier trains a module the user built; checkpoints reload through the one checkpoint module."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision

import attngraft
from attngraft.data import ImageDataModule
from attngraft.errors import ConfigError, WeightsError
from attngraft.train import FeatureCache, ImageClassifier, create_trainer, load_checkpoint, rebuild_network
from attngraft.train.callbacks import AtomicCheckpointIO, RandomState
from attngraft.train.network import describe_network

HEAD = {"mode": "head", "block": "graph", "stage": "layer2", "num_heads": 2, "embed_dim": 32}
SPEC = {
    "backbone": "torchvision/resnet18",
    "in_chans": 1,
    "num_classes": 10,
    "image_size": 28,
    "graft": [HEAD],
    "freeze": "backbone",
}


def _user_model() -> torch.nn.Module:
    resnet = torchvision.models.resnet18(weights=None)
    resnet.conv1 = torch.nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    return attngraft.graft(resnet, [HEAD], freeze="backbone", num_classes=10, image_size=28)


def _data(fashion_mnist_dir: Path) -> ImageDataModule:
    return ImageDataModule(
        data_dir=fashion_mnist_dir, batch_size=32, train_size=96, val_size=64, num_workers=0, cache_images=False
    )


def _fit(model: ImageClassifier, data: ImageDataModule, directory: Path, *callbacks: L.Callback) -> L.Trainer:
    trainer = create_trainer(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=str(directory),
        run_directory=directory / "run",
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    return trainer


def _images(data: ImageDataModule) -> torch.Tensor:
    data.setup("fit")
    return torch.stack([data.splits["val"][index][0] for index in range(4)])


def test_a_user_module_trains_as_it_is_and_needs_itself_to_reload(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    network = _user_model()
    assert describe_network(network) is None  # grafted onto a module attngraft did not build
    model = ImageClassifier(network, lr=1e-3)
    assert model.network is network
    assert (model.hparams["num_classes"], model.hparams["in_chans"]) == (10, 1)  # read off the module
    data = _data(fashion_mnist_dir)
    before = copy.deepcopy(network.backbone.state_dict())
    trainer = _fit(model, data, tmp_path)
    assert trainer.global_step == 3
    after = network.backbone.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # frozen backbone, statistics included
    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)

    with pytest.raises(ConfigError, match="pass the same module"):
        ImageClassifier.load_from_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match=r"torchvision.*GraftedModel|GraftedModel.*network=module"):
        load_checkpoint(checkpoint)
    images = _images(data)
    expected = network.eval()(images)
    fresh = _user_model()
    assert not torch.equal(fresh.eval()(images), expected)
    reloaded = ImageClassifier.load_from_checkpoint(checkpoint, network=fresh).network
    torch.testing.assert_close(reloaded.eval()(images), expected, rtol=0, atol=0)
    loaded = load_checkpoint(checkpoint, network=_user_model())
    torch.testing.assert_close(loaded.network(images), expected, rtol=0, atol=0)
    assert loaded.global_step == 3


def test_a_spec_built_module_reloads_from_its_checkpoint_alone(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    network = attngraft.build(SPEC)
    (head,) = describe_network(network)["graft"]
    assert head.items() >= HEAD.items()  # with the defaults filled in
    model = ImageClassifier(network)
    data = _data(fashion_mnist_dir)
    trainer = _fit(model, data, tmp_path)
    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    images = _images(data)
    expected = network.eval()(images)
    torch.testing.assert_close(ImageClassifier.load_from_checkpoint(checkpoint).network.eval()(images), expected)
    torch.testing.assert_close(load_checkpoint(checkpoint).network(images), expected, rtol=0, atol=0)


def test_the_feature_cache_serves_a_users_grafted_module(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    cache = FeatureCache(mode="memory")  # "memory" fails loudly when caching is not possible
    model = ImageClassifier(_user_model())
    trainer = _fit(model, _data(fashion_mnist_dir), tmp_path, cache)
    assert cache.active
    assert trainer.global_step == 3


def test_a_module_with_another_class_count_is_a_clear_error(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    resnet = torchvision.models.resnet18(weights=None, num_classes=7)
    resnet.conv1 = torch.nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    model = ImageClassifier(resnet)
    assert model.hparams["num_classes"] == 7  # its classifier's
    with pytest.raises(ConfigError, match=r"\(32, 7\).*num_classes=10"):
        _fit(ImageClassifier(resnet, num_classes=10), _data(fashion_mnist_dir), tmp_path)


def test_backbone_weights_are_refused_for_a_module() -> None:
    with pytest.raises(ConfigError, match="backbone_weights"):
        ImageClassifier(_user_model(), backbone_weights="x.safetensors")


def test_rebuild_network_reads_a_weights_file_exactly(tmp_path: Path) -> None:
    network = attngraft.build(SPEC)
    weights = attngraft.grafting.save_weights(network, tmp_path / "weights.safetensors")
    rebuilt = rebuild_network(SPEC, num_classes=10, in_chans=1, weights=weights)
    images = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(rebuilt(images), network.eval()(images), rtol=0, atol=0)
    with pytest.raises(WeightsError, match="do not fit"):
        rebuild_network({**SPEC, "graft": [{**HEAD, "embed_dim": 16}]}, num_classes=10, in_chans=1, weights=weights)


def test_the_trainer_factory_adds_attngraft_defaults(tmp_path: Path) -> None:
    trainer = create_trainer(run_directory=tmp_path / "run", accelerator="cpu", enable_progress_bar=False)
    assert any(isinstance(callback, RandomState) for callback in trainer.callbacks)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert {Path(logger.log_dir) for logger in trainer.loggers} == {tmp_path / "run"}
