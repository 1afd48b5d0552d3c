from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from attngraft.errors import ConfigError, SpecError, TrainingError
from attngraft.grafting import GraftedModel, save_weights
from attngraft.train import ImageClassifier, build_network

HEAD_SPEC = {
    "backbone": "attngraft/resnet18",
    "image_size": 28,
    "graft": [{"mode": "head", "block": "graph", "stage": "layer3", "embed_dim": 32, "num_heads": 2}],
}


@pytest.mark.parametrize(
    ("network", "kind"),
    [
        ("mnist_cnn", "MnistCNN"),
        ({"name": "vit", "img_size": 28, "patch_size": 7, "depth": 1, "embed_dim": 32, "num_heads": 2}, "Vision"),
        ("torchvision/resnet18", "ResNet"),
        (HEAD_SPEC, "GraftedModel"),
    ],
)
def test_network_forms_build_for_the_data(network: object, kind: str) -> None:
    model = build_network(network, num_classes=7, in_chans=1)  # type: ignore[arg-type]
    assert type(model).__name__.startswith(kind)
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_spec_file_and_disagreeing_spec(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("backbone: attngraft/resnet18\nnum_classes: 5\nimage_size: 28\n")
    with pytest.raises(ConfigError, match="num_classes: 5 but the data gives 10"):
        build_network(str(path), num_classes=10, in_chans=1)
    assert isinstance(build_network(str(path), num_classes=5, in_chans=1), GraftedModel)


def test_backbone_weights_replace_the_spec_weights(tmp_path: Path) -> None:
    trained = build_network("resnet18", num_classes=10, in_chans=1)
    weights = save_weights(trained, tmp_path / "resnet18.safetensors")
    grafted = build_network(HEAD_SPEC, num_classes=10, in_chans=1, backbone_weights=str(weights))
    assert torch.equal(grafted.backbone.stem[0].weight, trained.stem[0].weight)
    with pytest.raises(ConfigError, match="backbone_weights applies only to a graft spec"):
        build_network("resnet18", num_classes=10, in_chans=1, backbone_weights=str(weights))


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"lr": -1.0}, "model.lr"),
        ({"optimizer": "adam"}, "model.optimizer"),
        ({"schedule": "step"}, "model.schedule"),
        ({"label_smoothing": 1.5}, "model.label_smoothing"),
        ({"mixup_alpha": -0.2}, "model.mixup_alpha"),
        ({"distillation": "medium", "teacher": "mnist_cnn", "teacher_weights": "x.pt"}, "model.distillation"),
        ({"distillation": "hard"}, "model.distillation needs model.teacher"),
        ({"network": {"size": 3}}, "needs 'name'"),
    ],
)
def test_invalid_options_name_their_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ImageClassifier(**{"network": "mnist_cnn", **options})  # type: ignore[arg-type]


def test_unknown_spec_key_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="unknown spec key"):
        ImageClassifier({"backbone": "attngraft/resnet18", "grafts": []})


def _batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def _attach(module: L.LightningModule) -> None:
    """Runs steps outside a fit: logging becomes a no-op."""
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]


def test_mixup_and_cutmix_train_on_soft_targets() -> None:
    module = ImageClassifier("mnist_cnn", mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    _attach(module)
    images, labels = _batch()
    mixed_images, targets = module.mix(images, labels)  # type: ignore[misc]
    assert targets.shape == (8, 10)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    assert not torch.equal(mixed_images, images)
    assert torch.isfinite(module.training_step((images, labels), 0))


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_deit_distillation_from_a_teacher_checkpoint(tmp_path: Path, kind: str) -> None:
    teacher = build_network("mnist_cnn", num_classes=10, in_chans=1)
    weights = save_weights(teacher, tmp_path / "teacher.safetensors")
    student = {"name": "deit", "img_size": 28, "patch_size": 7, "depth": 1, "embed_dim": 32, "num_heads": 2}
    module = ImageClassifier(
        student, distillation=kind, teacher="mnist_cnn", teacher_weights=str(weights), distill_temperature=2.0
    )
    _attach(module)
    assert torch.equal(module.teacher.head.weight, teacher.head.weight)
    assert not any(parameter.requires_grad for parameter in module.teacher.parameters())
    module.train()
    assert not module.teacher.training  # the teacher never trains, nor drops out
    images, labels = _batch()
    outputs = module(images)
    assert isinstance(outputs, tuple)
    assert len(outputs) == 2
    loss = module.training_step((images, labels), 0)
    loss.backward()
    assert module.network.head_dist.weight.grad is not None
    assert module.teacher.head.weight.grad is None


def test_non_finite_loss_stops_naming_the_step() -> None:
    module = ImageClassifier("mnist_cnn")
    _attach(module)
    with torch.no_grad():
        module.network.head.weight.fill_(float("nan"))
    with pytest.raises(
        TrainingError,
        match=r"loss is nan \(on this or another process\) at step 0 \(epoch 0, batch 3\).*Last good checkpoint",
    ):
        module.training_step(_batch(), 3)
