"""Deployment files of a trained model: ``torch.export`` programs, TorchScript and ONNX, each checked against eager.

``export_model(model, out, format=..., images=...)`` writes one file with a dynamic batch dimension, loads it back,
runs it on ``images`` at two batch sizes and compares with the eager model; a difference above the tolerance
(1e-4) is an error and nothing is written. The formats:

- ``exported``: ``torch.export.export`` + ``torch.export.save`` (``.pt2``; ``torch.export.load`` reads it).
- ``torchscript``: ``torch.jit.trace`` (``.pt``; ``torch.jit.load`` reads it, in C++ too). PyTorch marks TorchScript
  as deprecated in favour of ``torch.export``; it is kept for runtimes that still load it.
- ``onnx``: ``torch.onnx.export`` of the exported program (the dynamo exporter), falling back to the TorchScript
  exporter if that fails; checked with onnxruntime (``pip install 'attngraft[export]'``).

Grafted models export as they run: the inserted blocks' forward hooks run during tracing, so their operations are
in the graph (the check would catch a graph without them), and k×k local attention takes its plain path while
exporting (see :mod:`attngraft.blocks.kernels`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.jit._trace import TracerWarning

from attngraft._io import _umask
from attngraft.errors import ConfigError, ExportError

logger = logging.getLogger(__name__)

FORMATS = ("exported", "torchscript", "onnx")
SUFFIXES = {"exported": ".pt2", "torchscript": ".pt", "onnx": ".onnx"}
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "images", "logits"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how well the file reproduces the eager model.

    Attributes:
        path: The file written.
        format: "exported", "torchscript" or "onnx".
        exporter: The exporter that made it (e.g. "torch.onnx (dynamo)").
        input_shape: One image's shape (C, H, W); the batch dimension is dynamic.
        batch_sizes: The batch sizes the file was checked at.
        max_abs_diff: The largest absolute difference of its logits from the eager model's.
    """

    path: Path
    format: str
    exporter: str
    input_shape: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    max_abs_diff: float


def load_network(source: str | Path) -> nn.Module:
    """The network to export: a directory of :func:`attngraft.save`, or a checkpoint of ``attngraft fit``.

    Raises:
        ConfigError: For a path that is neither a directory nor a file.
        SavedModelError, WeightsError: For a saved model or checkpoint that cannot be read (see their loaders).
    """
    path = Path(source)
    if path.is_dir():
        from attngraft.saving import load

        return load(path)
    if path.is_file():
        return _load_checkpoint(path)
    raise ConfigError(f"{path}: no such directory (attngraft.save) or checkpoint file (attngraft fit)")


def _load_checkpoint(path: Path) -> nn.Module:
    """The trained network of a ``.ckpt`` (the one place that reads checkpoints is attngraft.train.checkpoint)."""
    from attngraft.train.checkpoint import load_checkpoint

    return load_checkpoint(path).network


def model_input(model: nn.Module) -> tuple[int | None, int | None]:
    """The input channels and image side the model was built for, where it says: (in_chans, image_size).

    A grafted model knows both; a zoo model its channels and, for ViTs and Swin, its ``img_size``.
    """
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict) or hasattr(model, "records"):
        return getattr(model, "in_chans", None), getattr(model, "image_size", None)
    config = getattr(model, "zoo_config", None)
    if isinstance(config, dict):
        return config.get("in_chans"), config.get("img_size")
    return None, None


def dataset_images(
    model: nn.Module,
    *,
    dataset: str = "fashion-mnist",
    data_dir: str | Path | None = None,
    count: int = 8,
    image_size: int | None = None,
) -> torch.Tensor:
    """The first ``count`` test images of ``dataset``, converted to the model's channels and image size.

    The size is ``image_size`` if given, else the model's own (:func:`model_input`), else the dataset's.

    Shape:
        - Output: (count, C, H, W), normalised as in training.

    Raises:
        DataNotFoundError: If the dataset's files are not found.
    """
    from attngraft.data import ImageDataModule

    channels, side = model_input(model)
    data = ImageDataModule(
        dataset, data_dir=data_dir, image_size=image_size or side, channels=channels, num_workers=0, cache_images=False
    )
    data.prepare_data()
    data.setup("test")
    test = data.splits["test"]
    return torch.stack([test[index][0] for index in range(count)])


def random_images(
    model: nn.Module, *, count: int = 8, image_size: int | None = None, in_chans: int | None = None
) -> torch.Tensor:
    """``count`` standard-normal images of the model's input shape (seeded, so a check is repeatable).

    Raises:
        ConfigError: When the model does not say its channels or image size and they are not given.
    """
    channels, side = model_input(model)
    channels, side = in_chans or channels, image_size or side
    if channels is None or side is None:
        raise ConfigError("the model does not say its input shape: give --in-chans and --image-size")
    return torch.randn(count, channels, side, side, generator=torch.Generator().manual_seed(0))


SUFFIXES = {"exported": ".pt2", "onnx": ".onnx"}  # torch.export.load reads only .pt2 files


def check_destination(out: str | Path, format: str) -> Path:
    """``out`` as a path, when its suffix is one ``format`` writes (any for torchscript).

    Raises:
        ConfigError: Naming the suffix the format needs.
    """
    out = Path(out)
    suffix = SUFFIXES.get(format)
    if suffix is not None and out.suffix != suffix:
        raise ConfigError(f"--out {out}: expected a {suffix} file for --format {format}; name it {out.stem}{suffix}")
    return out


def export_model(
    model: nn.Module, out: str | Path, *, format: str, images: torch.Tensor, tolerance: float = TOLERANCE
) -> ExportReport:
    """Exports ``model`` (in eval mode) to ``out`` with a dynamic batch dimension, checked against eager PyTorch.

    The file is traced on two of ``images`` and checked on all of them and on one; it is written only if every
    logit is within ``tolerance`` of the eager model's.

    Args:
        model: The network.
        out: The file to write.
        format: "exported", "torchscript" or "onnx".
        images: Check images, at least two.
        tolerance: Largest allowed absolute difference of a logit.

    Raises:
        ConfigError: For an unknown format or fewer than two images.
        ExportError: When the exported file's logits differ by more than ``tolerance`` (nothing is written), or
            ONNX is asked for without onnx/onnxruntime installed.

    Shape:
        - images: (N, C, H, W), N ≥ 2.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: expected one of {list(FORMATS)}")
    if images.ndim != 4 or images.shape[0] < 2:
        raise ConfigError(f"export needs at least two check images (N, C, H, W), got {tuple(images.shape)}")
    out = check_destination(out, format)
    model = model.eval()
    checks = (images, images[:1])
    try:
        with torch.no_grad():
            expected = [model(batch) for batch in checks]  # eager first: it also fills the blocks' shape caches
    except RuntimeError as error:  # e.g. images smaller than a kernel, or of other channels than the model's
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"the model cannot run on check images of shape {tuple(images.shape[1:])} (C, H, W): {reason}"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as staging:
        temporary = Path(staging) / out.name  # the exporters and loaders see the file's real name and suffix
        exporter = _EXPORTERS[format](model, images[:2], temporary)
        outputs = _RUNNERS[format](temporary, checks)
        difference = max(float((got - want).abs().max()) for got, want in zip(outputs, expected, strict=True))
        if not difference <= tolerance:  # NaN fails too
            raise ExportError(
                f"the {format} export of {type(model).__name__} differs from the eager model by {difference:.3g} "
                f"(more than {tolerance:g}); nothing was written to {out}"
            )
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, out)
    report = ExportReport(out, format, exporter, tuple(images.shape[1:]), tuple(len(b) for b in checks), difference)
    logger.info("%s: %s, max abs diff %.3g", out, exporter, difference)
    return report


def _exported_program(model: nn.Module, sample: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))


def _export_program(model: nn.Module, sample: torch.Tensor, path: Path) -> str:
    torch.export.save(_exported_program(model, sample), path)
    return "torch.export"


def _export_torchscript(model: nn.Module, sample: torch.Tensor, path: Path) -> str:
    with warnings.catch_warnings(), torch.no_grad():
        # Shape checks in Python become constants in the trace; the check on another batch size is the test.
        warnings.simplefilter("ignore", TracerWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=FutureWarning)  # asked for: TorchScript
        traced = torch.jit.trace(model, sample)  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(path))
    return "torch.jit.trace"


def _export_onnx(model: nn.Module, sample: torch.Tensor, path: Path) -> str:
    _require_onnx()
    try:
        program = torch.onnx.export(
            _exported_program(model, sample),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamo=True,
            verbose=False,
        )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(path))
        return "torch.onnx (dynamo)"
    except Exception as error:  # the dynamo exporter fails in many ways; the TorchScript exporter is the fallback
        logger.warning("the dynamo ONNX exporter failed (%s); using the TorchScript exporter", error)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", TracerWarning)
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            dynamo=False,
        )
    return "torch.onnx (torchscript)"


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ExportError("--format onnx needs onnx and onnxruntime: pip install 'attngraft[export]'") from None


def _run_program(path: Path, batches: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    module = torch.export.load(path).module()
    with torch.no_grad():
        return [module(batch) for batch in batches]


def _run_torchscript(path: Path, batches: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    with torch.no_grad():
        return [module(batch) for batch in batches]


def run_onnx(path: str | Path, batches: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Runs an ONNX file with onnxruntime (CPU) on each batch; returns the logits as tensors."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [torch.from_numpy(session.run(None, {name: batch.numpy()})[0]) for batch in batches]


_EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path], str]] = {
    "exported": _export_program,
    "torchscript": _export_torchscript,
    "onnx": _export_onnx,
}
_RUNNERS: dict[str, Callable[[Path, tuple[torch.Tensor, ...]], list[Any]]] = {
    "exported": _run_program,
    "torchscript": _run_torchscript,
    "onnx": run_onnx,
}
