"""The user's images: flat and train/test folders, stratified splits, any image mode, normalisation, the CLI."""

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attngraft.cli import main
from attngraft.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MatchChannels,
    fit_statistics,
    load_image,
    load_split,
    locate_dataset,
    resolve_normalization,
    split_dataset,
    stratified_split,
)
from attngraft.data.datamodule import ImageDataModule
from attngraft.errors import ConfigError, CorruptDataError, DataNotFoundError

from .fixtures import write_class_folders, write_image_folder

COUNTS = {"ant": 10, "bee": 20, "cow": 30}


def labels_of(counts: list[int]) -> list[int]:
    return [label for label, count in enumerate(counts) for _ in range(count)]


# --- stratified splits -------------------------------------------------------------------------------------------


def test_stratified_split_is_a_seeded_partition_with_every_class_in_every_split() -> None:
    labels = labels_of([10, 20, 30])
    parts = stratified_split(labels, {"val": 0.1, "test": 0.2}, seed=3, where="pets")
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(60))
    assert (len(parts["val"]), len(parts["test"])) == (6, 12)
    for split, indices in parts.items():
        per_class = np.bincount([labels[index] for index in indices], minlength=3)
        assert per_class.min() >= 1, split
    assert [labels[index] for index in parts["test"]].count(2) == 6  # in proportion: 0.2 of 30
    assert stratified_split(labels, {"val": 0.1, "test": 0.2}, seed=3, where="pets") == parts
    assert stratified_split(labels, {"val": 0.1, "test": 0.2}, seed=4, where="pets")["val"] != parts["val"]


def test_stratified_counts_are_exact_and_each_class_keeps_one() -> None:
    labels = labels_of([3, 50])
    parts = stratified_split(labels, {"val": 7}, seed=0, where="pets")
    assert len(parts["val"]) == 7
    assert sum(1 for index in parts["val"] if labels[index] == 0) == 1  # the small class still appears
    assert sum(1 for index in parts["train"] if labels[index] == 0) == 2


def test_a_class_too_small_for_the_split_is_named() -> None:
    with pytest.raises(ValueError, match=r"pets: class 'bee' has 2 images; a train/val/test split needs at least 3"):
        stratified_split(labels_of([5, 2]), {"val": 0.1, "test": 0.1}, seed=0, where="pets", class_names=["a", "bee"])


def test_held_out_sizes_that_leave_no_training_images_are_refused() -> None:
    with pytest.raises(ValueError, match="val 5, test 5 of 10 images leave none for training"):
        stratified_split(labels_of([5, 5]), {"val": 5, "test": 5}, seed=0, where="pets")


# --- layouts -----------------------------------------------------------------------------------------------------


def test_flat_folder_is_split_three_ways_by_class(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "pets", COUNTS)
    assert locate_dataset("imagefolder", data_dir=root).layout == "flat"
    parts = split_dataset("imagefolder", data_dir=root, val_size=0.1, test_size=0.2, seed=1)
    folder = parts["train"].dataset
    assert folder.classes == ["ant", "bee", "cow"]
    assert {split: len(part.indices) for split, part in parts.items()} == {"train": 42, "val": 6, "test": 12}
    for part in parts.values():
        assert part.dataset is folder
        assert set(np.asarray(folder.targets)[part.indices].tolist()) == {0, 1, 2}
    assert not set(parts["train"].indices) & set(parts["test"].indices)


def test_train_test_layout_still_works_and_holds_val_out_of_train(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", per_class=4)
    assert locate_dataset("imagefolder", data_dir=root).layout == "train/test"
    parts = split_dataset("imagefolder", data_dir=root, val_size=2)
    assert {split: len(part.indices) for split, part in parts.items()} == {"train": 6, "val": 2, "test": 8}
    assert parts["val"].dataset.root == str(root / "train")
    assert set(np.asarray(parts["val"].dataset.targets)[parts["val"].indices].tolist()) == {0, 1}
    with pytest.raises(ConfigError, match="has its own test split"):
        split_dataset("imagefolder", data_dir=root, test_size=0.1)


def test_classes_named_train_and_test_holding_images_are_a_flat_folder(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "odd", {"train": 5, "test": 5})
    assert locate_dataset("imagefolder", data_dir=root).layout == "flat"
    assert load_split("imagefolder", train=True, data_dir=root).classes == ["test", "train"]


def test_split_folders_beside_class_folders_are_ambiguous(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets")
    write_class_folders(root / "extra", {"cat": 1})
    with pytest.raises(CorruptDataError, match=r"train/ and test/ split folders beside other folders \(extra\)"):
        locate_dataset("imagefolder", data_dir=root)


def test_test_folder_with_a_class_train_lacks_is_named(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets")
    write_class_folders(root / "test", {"emu": 1})
    with pytest.raises(DataNotFoundError, match=r"test: class folders \['emu'\] are not among the classes"):
        load_split("imagefolder", train=False, data_dir=root)


def test_labels_of_train_and_test_agree_when_test_lacks_a_class(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", classes=("cat", "dog", "emu"))
    for image in (root / "test" / "dog").iterdir():
        image.unlink()
    with pytest.raises(DataNotFoundError, match=r"pets/test: no images for the classes dog"):
        load_split("imagefolder", train=False, data_dir=root)


def test_hidden_entries_are_ignored_and_other_files_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_class_folders(tmp_path / "pets", {"ant": 2, "bee": 2})
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "x.png").write_bytes(b"not read")
    (root / "ant" / ".DS_Store").write_bytes(b"\0")
    (root / "ant" / ".thumbs").mkdir()
    (root / "ant" / ".thumbs" / "0.png").write_bytes(b"not read")
    (root / "bee" / "notes.txt").write_text("a bee")
    with caplog.at_level(logging.WARNING):
        folder = load_split("imagefolder", train=True, data_dir=root)
    assert folder.classes == ["ant", "bee"]
    assert len(folder) == 4
    assert "skipped 1 files that are not images (bee/notes.txt)" in caplog.text


@pytest.mark.parametrize("case", ["no classes", "empty class"])
def test_folder_without_classes_or_images_is_named(tmp_path: Path, case: str) -> None:
    root = tmp_path / "pets"
    if case == "no classes":
        root.mkdir()
        (root / "readme.txt").write_text("nothing")
        with pytest.raises(DataNotFoundError, match=r"not found\. Looked for <class>/<image> folders"):
            split_dataset("imagefolder", data_dir=root)
    else:
        write_class_folders(root, {"ant": 3})
        (root / "bee").mkdir()
        (root / "bee" / "bee.txt").write_text("no image")
        with pytest.raises(DataNotFoundError, match=r"pets: no images for the classes bee \(image files end in"):
            split_dataset("imagefolder", data_dir=root)


def test_class_too_small_for_the_split_is_a_config_error_naming_folder_and_class(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "pets", {"ant": 10, "bee": 2})
    with pytest.raises(ConfigError, match=r"pets: class 'bee' has 2 images; a train/val/test split needs at least 3"):
        split_dataset("imagefolder", data_dir=root)


def test_corrupt_image_is_named_when_read(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "pets", {"ant": 3})
    (root / "ant" / "1.png").write_bytes(b"\x89PNG broken")
    folder = load_split("imagefolder", train=True, data_dir=root)
    folder[0]
    with pytest.raises(CorruptDataError, match=r"ant/1.png: unreadable image"):
        folder[1]


# --- image modes -------------------------------------------------------------------------------------------------


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    image = load_image(path)
    assert image.mode == "F"
    np.testing.assert_allclose(np.asarray(image), values / 65535, rtol=1e-6)


def test_thirty_two_bit_integer_tiff_is_read_as_sixteen_bit(tmp_path: Path) -> None:
    values = np.array([[0, 65535], [70000, 13107]], dtype=np.int32)
    path = save(Image.fromarray(values, mode="I"), tmp_path / "deep.tif")
    np.testing.assert_allclose(np.asarray(load_image(path)), [[0.0, 1.0], [1.0, 0.2]], rtol=1e-6)


def test_float_tiff_is_clipped_to_unit_range(tmp_path: Path) -> None:
    values = np.array([[-0.5, 0.25], [0.75, 3.0]], dtype=np.float32)
    path = save(Image.fromarray(values, mode="F"), tmp_path / "float.tif")
    np.testing.assert_allclose(np.asarray(load_image(path)), [[0.0, 0.25], [0.75, 1.0]])


def test_transparency_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 100, 50, 0)  # transparent: black whatever its colour
    rgba[0, 2] = (200, 100, 50, 128)  # half: about half the colour
    image = load_image(save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "clear.png"))
    assert image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert pixels[0, 0].tolist() == [200, 100, 50]
    assert pixels[0, 1].tolist() == [0, 0, 0]
    np.testing.assert_allclose(pixels[0, 2], [100, 50, 25], atol=1)
    grey = load_image(save(Image.fromarray(rgba[..., [0, 3]], mode="LA"), tmp_path / "grey.png"))
    assert grey.mode == "L"
    assert np.asarray(grey)[0].tolist()[:2] == [200, 0]


def test_palette_with_a_transparent_colour_is_composited(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1
    image = load_image(save(palette, tmp_path / "palette.png"))
    assert np.asarray(image).tolist() == [[[255, 0, 0], [0, 0, 0]]]


def mode_images(tmp_path: Path) -> dict[str, tuple[Path, str, float]]:
    """One 5x3 image per PIL mode: path, expected loaded mode, expected value of its first pixel in [0, 1]."""
    grey = np.full((3, 5), 51, dtype=np.uint8)  # 0.2
    cases = {
        "L": (Image.fromarray(grey), "L", 0.2),
        "1": (Image.fromarray(grey).point(lambda value: 255).convert("1"), "L", 1.0),
        "RGB": (Image.fromarray(np.dstack([grey] * 3)), "RGB", 0.2),
        "RGBA": (Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)])), "RGB", 0.2),
        "P": (Image.fromarray(np.dstack([grey] * 3)).convert("P"), "RGB", 0.2),
        "I;16": (Image.fromarray(np.full((3, 5), 13107, dtype=np.uint16)), "F", 0.2),
    }
    written = {}
    for mode, (image, loaded, value) in cases.items():
        assert image.mode == mode
        written[mode] = (save(image, tmp_path / f"{mode.replace(';', '_')}.png"), loaded, value)
    return written


@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_becomes_the_configured_channels_and_size(tmp_path: Path, channels: int) -> None:
    root = tmp_path / "modes"
    (root / "all").mkdir(parents=True)
    cases = mode_images(root / "all")
    module = ImageDataModule(
        "imagefolder", data_dir=root, image_size=8, channels=channels, normalize="none", val_size=1, test_size=1
    )
    module.setup()
    folder = module.splits["train"].dataset
    assert len(folder) == len(cases)
    for index, (path, _) in enumerate(folder.samples):
        expected_mode, value = next((mode, value) for file, mode, value in cases.values() if str(file) == path)
        assert load_image(path).mode == expected_mode
        image = module.eval_transform(folder[index][0])
        assert image.shape == (channels, 8, 8), path
        assert image.dtype == torch.float32
        torch.testing.assert_close(image, torch.full_like(image, value), atol=2e-3, rtol=0, msg=path)


def test_match_channels_uses_luma_like_pil(tmp_path: Path) -> None:
    colour = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    tensor = torch.from_numpy(colour).permute(2, 0, 1).float() / 255  # (3, H, W)
    grey = MatchChannels(1)(tensor)
    expected = np.asarray(Image.fromarray(colour).convert("L")) / 255
    torch.testing.assert_close(grey[0], torch.from_numpy(expected).float(), atol=1 / 255, rtol=0)
    assert MatchChannels(3)(grey).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="expected 1 or 3 channels, got 2"):
        MatchChannels(3)(torch.rand(2, 4, 5))


# --- normalisation -----------------------------------------------------------------------------------------------


def test_resolve_normalization() -> None:
    assert resolve_normalization("auto") == "dataset"
    assert resolve_normalization("auto", imagenet_weights=True) == "imagenet"
    assert resolve_normalization("dataset", imagenet_weights=True) == "dataset"
    assert resolve_normalization(True) == "dataset"
    assert resolve_normalization(False) == "none"
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "data.normalize 'imgnet': expected one of auto, dataset, imagenet, none (did you mean 'imagenet'?)"
        ),
    ):
        resolve_normalization("imgnet")


def test_imagenet_statistics_for_grey_images_are_the_channel_averages() -> None:
    mean, std = fit_statistics(IMAGENET_MEAN, IMAGENET_STD, 1)
    assert mean == pytest.approx((0.449,), abs=1e-6)
    assert std == pytest.approx((0.226,), abs=1e-6)
    assert fit_statistics((0.5,), (0.25,), 3) == ((0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize(
    ("normalize", "channels", "expected"),
    [
        ("none", 3, [0.2, 0.2, 0.2]),
        ("imagenet", 3, [(0.2 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]),
        ("imagenet", 1, [(0.2 - 0.449) / 0.226]),
        ("dataset", 3, [(0.2 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]),
    ],
)
def test_data_module_normalisation(tmp_path: Path, normalize: str, channels: int, expected: list[float]) -> None:
    module = ImageDataModule("imagefolder", image_size=4, channels=channels, normalize=normalize)
    image = module.eval_transform(Image.fromarray(np.full((4, 4), 51, dtype=np.uint8)))
    torch.testing.assert_close(image[:, 0, 0], torch.tensor(expected), atol=1e-4, rtol=0)


def test_fashion_mnist_can_use_imagenet_statistics() -> None:
    module = ImageDataModule("fashion-mnist", normalize="imagenet")
    image = module.eval_transform(Image.fromarray(np.full((28, 28), 51, dtype=np.uint8)))
    assert image.shape == (1, 28, 28)
    torch.testing.assert_close(image[0, 0, 0], torch.tensor((0.2 - 0.449) / 0.226), atol=1e-4, rtol=0)
    assert module.statistics == (IMAGENET_MEAN, IMAGENET_STD)
    assert ImageDataModule("fashion-mnist", normalize=False).statistics == ((0.0,), (1.0,))


def test_auto_normalisation_adopts_imagenet_for_imagenet_weights_only() -> None:
    module = ImageDataModule("fashion-mnist")
    assert module.normalization == "dataset"
    before = repr(module.eval_transform)
    assert module.adopt_backbone_normalization(imagenet_weights=True) == "imagenet"
    assert module.statistics == (IMAGENET_MEAN, IMAGENET_STD)
    assert repr(module.eval_transform) != before
    assert module.adopt_backbone_normalization(imagenet_weights=False) == "dataset"
    assert repr(module.eval_transform) == before
    fixed = ImageDataModule("fashion-mnist", normalize="dataset")
    assert fixed.adopt_backbone_normalization(imagenet_weights=True) == "dataset"


# --- the data module over a folder -------------------------------------------------------------------------------


def test_data_module_over_a_flat_folder(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "pets", COUNTS, size=(9, 5))
    module = ImageDataModule("imagefolder", data_dir=root, image_size=6, batch_size=4, num_workers=0, test_size=12)
    assert module.num_classes == 3  # listed before setup, for the model's head
    assert module.num_channels == 3
    module.setup("fit")
    module.setup("test")
    sizes = {split: len(dataset) for split, dataset in module.splits.items()}
    assert sizes == {"train": 42, "val": 6, "test": 12}
    images, labels = next(iter(module.val_dataloader()))
    assert images.shape == (4, 3, 6, 6)
    assert labels.max() < 3
    train, test = set(module.splits["train"].indices), set(module.splits["test"].indices)
    assert not train & test


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "data.image_size null: expected a positive integer for imagefolder"),
        ({"image_size": 8, "channels": 2}, r"data.channels 2: expected 1 \(grey\) or 3 \(RGB\)"),
        ({"image_size": 8, "test_size": 1.5}, r"data.test_size 1.5: expected a count >= 0 or a fraction in \(0, 1\)"),
        ({"image_size": 8, "val_size": 0.5, "test_size": 0.5}, r"data.val_size \+ data.test_size 0.5 \+ 0.5: expected"),
        ({"image_size": 8, "normalize": "imgnet"}, "data.normalize 'imgnet': expected one of"),
    ],
)
def test_data_module_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageDataModule("imagefolder", **settings)


# --- attngraft data imagefolder ----------------------------------------------------------------------------------


def test_cli_prints_splits_and_class_counts_of_a_flat_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_class_folders(tmp_path / "pets", COUNTS)
    (root / "dog").mkdir()
    for index in range(3):
        Image.fromarray(np.zeros((7, 7), dtype=np.uint8)).save(root / "dog" / f"{index}.png")
    assert main(["data", "imagefolder", "--data-dir", str(root), "--test-size", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "layout       <class>/<image>, split by val_size and test_size" in out
    # val round(0.1 * 63) = 6 and test round(0.2 * 63) = 13, shared by largest remainders; dog gets its minimum 1.
    assert "splits       train 44, val 6, test 13 (of 63 images)" in out
    assert "image shape  2 shapes, most often 3x4x6 (of 44 images measured)" in out
    for row in ("0  ant  7  1  2", "1  bee  14  2  4", "2  cow  22  2  6", "3  dog  1  1  1"):
        assert re.search(r"^\s+" + row.replace("  ", r"\s+") + "$", out, re.MULTILINE), row


def test_cli_prints_a_train_test_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "pets", per_class=5)
    assert main(["data", "imagefolder", "--data-dir", str(root), "--val-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "splits       train 8 + val 2 (official train 10), test 10" in out
    assert re.search(r"^\s+1\s+dog\s+4\s+1\s+5$", out, re.MULTILINE)


@pytest.mark.parametrize("name", ["imagefolder", "fashion-mnist"])
def test_cli_missing_data_dir_is_an_error_not_a_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str
) -> None:
    assert main(["data", name, "--data-dir", str(tmp_path / "nowhere")]) == 2
    message = f"dataset {name!r} not found: --data-dir {tmp_path / 'nowhere'} is not a directory"
    assert capsys.readouterr().err == f"attngraft data: error: {message}\n"


def test_cli_too_small_class_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_class_folders(tmp_path / "pets", {"ant": 10, "bee": 1})
    assert main(["data", "imagefolder", "--data-dir", str(root)]) == 2
    assert "class 'bee' has 1 image;" in capsys.readouterr().err
