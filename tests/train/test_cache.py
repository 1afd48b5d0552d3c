from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from attngraft.data.datamodule import ImageDataModule
from attngraft.errors import ConfigError
from attngraft.train import FeatureCache, ImageClassifier

HEAD_SPEC = {
    "backbone": "attngraft/resnet18",
    "image_size": 28,
    "graft": [{"mode": "head", "block": "graph", "stage": "layer3", "embed_dim": 32, "num_heads": 2}],
}


def _fit(
    data_dir: Path, cache: FeatureCache, network: object = HEAD_SPEC, precision: str = "32-true", **model: object
) -> ImageClassifier:
    L.seed_everything(0)
    module = ImageClassifier(network, num_classes=10, in_chans=1, lr=3e-3, **model)  # type: ignore[arg-type]
    data = ImageDataModule(data_dir=data_dir, batch_size=32, train_size=256, val_size=64, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        precision=precision,  # type: ignore[arg-type]
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cache],
    )
    trainer.fit(module, data)
    return module


def _logits(module: ImageClassifier) -> torch.Tensor:
    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return module.eval()(images)


def test_cached_training_gives_the_logits_of_uncached_training(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    uncached_cache = FeatureCache("off")
    uncached = _fit(fashion_mnist_dir, uncached_cache)
    cache = FeatureCache("memory")
    cached = _fit(fashion_mnist_dir, cache)
    assert cache.active
    assert not uncached_cache.active
    assert not cached.cached  # images again after fit
    untrained = ImageClassifier(HEAD_SPEC, num_classes=10, in_chans=1)
    assert not torch.allclose(_logits(untrained), _logits(uncached), atol=1e-3)  # training moved the head
    torch.testing.assert_close(_logits(cached), _logits(uncached), rtol=1e-4, atol=1e-5)


def test_disk_cache_is_written_once_and_reused(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "features"
    first = _fit(fashion_mnist_dir, FeatureCache("disk", directory=str(directory)))
    files = sorted(directory.glob("*.safetensors"))
    assert len(files) == 2  # train and val
    stamps = [path.stat().st_mtime_ns for path in files]
    second = _fit(fashion_mnist_dir, FeatureCache("disk", directory=str(directory)))
    assert [path.stat().st_mtime_ns for path in sorted(directory.glob("*.safetensors"))] == stamps
    torch.testing.assert_close(_logits(first), _logits(second))


def test_a_shared_store_computes_one_backbones_features_once(
    fashion_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: dict = {}
    first = _fit(fashion_mnist_dir, FeatureCache("auto", store=store))
    assert len(store) == 2  # train and val
    features = list(store.values())

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("features were computed again")

    monkeypatch.setattr(FeatureCache, "_compute", fail)
    mhsa = {**HEAD_SPEC, "graft": [{**HEAD_SPEC["graft"][0], "block": "mhsa"}]}
    second = _fit(fashion_mnist_dir, FeatureCache("auto", store=store), network=mhsa)
    assert list(store.values()) == features
    assert second.network.backbone.layer1[0].conv1.weight.equal(first.network.backbone.layer1[0].conv1.weight)


@pytest.mark.parametrize(
    ("network", "model", "reason"),
    [
        ("mnist_cnn", {}, "no head graft"),
        ({**HEAD_SPEC, "freeze": "none"}, {}, "backbone parameters are trainable"),
        (HEAD_SPEC, {"mixup_alpha": 0.2}, "MixUp/CutMix"),
    ],
)
def test_auto_mode_explains_why_it_does_not_cache(
    fashion_mnist_dir: Path, network: object, model: dict[str, object], reason: str
) -> None:
    cache = FeatureCache("auto")
    _fit(fashion_mnist_dir, cache, network, **model)
    assert not cache.active
    assert reason in cache.reason


def test_bf16_mixed_features_match_and_true_half_precision_is_refused(fashion_mnist_dir: Path) -> None:
    cache = FeatureCache("memory")
    cached = _fit(fashion_mnist_dir, cache, precision="bf16-mixed")
    uncached = _fit(fashion_mnist_dir, FeatureCache("off"), precision="bf16-mixed")
    assert cache.active
    torch.testing.assert_close(_logits(cached), _logits(uncached), rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match="precision bf16-true"):
        _fit(fashion_mnist_dir, FeatureCache("memory"), precision="bf16-true")


def test_forced_cache_refuses_when_results_would_change(fashion_mnist_dir: Path) -> None:
    with pytest.raises(ConfigError, match="cannot cache features: the network has no head graft"):
        _fit(fashion_mnist_dir, FeatureCache("memory"), "mnist_cnn")
    with pytest.raises(ConfigError, match=r"feature_cache\.mode"):
        FeatureCache("sometimes")
