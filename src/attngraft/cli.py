"""The ``attngraft`` command line: parses arguments, calls the library, prints results.

User errors (unknown names, missing or corrupt data) exit with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from typing_extensions import override

from attngraft import validation
from attngraft.errors import AttngraftError, ConfigError, UnknownNameError

Handler = Callable[[argparse.Namespace], int]

# Bounds on values that would otherwise allocate absurd memory or run for days; each error states its reason.
MAX_DIM = 4_096  # attngraft blocks --dim
MAX_STEPS = 4_096  # attngraft explain --steps (Integrated Gradients)
MAX_CHECK_IMAGES = 1_024  # attngraft export --images
MAX_EXPLAIN_IMAGES = 1_000  # attngraft explain --images


def _format_summary_rows(
    name: str,
    data_dir: str | None,
    download: bool,
    *,
    val_size: int | float | None = None,
    test_size: int | float | None = None,
    seed: int = 0,
) -> list[str]:
    from attngraft.data import summarize

    summary = summarize(name, data_dir=data_dir, download=download, val_size=val_size, test_size=test_size, seed=seed)
    sizes = summary.split_sizes
    channels, height, width = summary.image_shape
    official_train = sizes["train"] + sizes["val"]
    if summary.layout == "flat":
        splits = f"train {sizes['train']}, val {sizes['val']}, test {sizes['test']} (of {sum(sizes.values())} images)"
    else:
        splits = f"train {sizes['train']} + val {sizes['val']} (official train {official_train}), test {sizes['test']}"
    layout = "<class>/<image>, split by val_size and test_size" if summary.layout == "flat" else "train/test"
    shape = f"{channels}x{height}x{width}"
    if summary.image_shapes > 1:
        shape = f"{summary.image_shapes} shapes, most often {shape} (of {summary.measured_images} images measured)"

    def join(values: tuple[float, ...]) -> str:
        return ", ".join(f"{value:.4f}" for value in values)

    rows = [
        f"dataset      {summary.name}",
        f"found in     {summary.source}",
        f"read from    {summary.root}",
        f"layout       {layout}",
        f"splits       {splits}",
        f"image shape  {shape}",
        f"mean         {join(summary.mean)}",
        f"std          {join(summary.std)}",
        "",
        f"{'label':>5}  {'class':<24}{'train':>8}{'val':>8}{'test':>8}",
    ]
    counts = summary.class_counts
    for label, class_name in enumerate(summary.classes):
        row = "".join(f"{counts[split][label]:>8}" for split in ("train", "val", "test"))
        rows.append(f"{label:>5}  {class_name:<24}{row}")
    return rows


def _count_or_fraction(text: str) -> int | float:
    """A held-out size from the command line: ``500`` (a count) or ``0.1`` (a fraction)."""
    try:
        return validation.fraction_or_count(float(text), text)
    except ValueError:  # not a number, or a ConfigError
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count >= 0 or a fraction in (0, 1)") from None


def _run_data(args: argparse.Namespace) -> int:
    from attngraft.data import get_dataset_spec, list_datasets
    from attngraft.errors import DataNotFoundError

    if args.list:
        for name in list_datasets():
            spec = get_dataset_spec(name)
            print(f"{name:<14}{spec.num_classes or '?':>4} classes  {type(spec.source).__name__}")
        return 0
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise DataNotFoundError(f"dataset {args.name!r} not found: --data-dir {args.data_dir} is not a directory")
    validation.integer(args.split_seed, "--split-seed")
    rows = _format_summary_rows(
        args.name, args.data_dir, args.download, val_size=args.val_size, test_size=args.test_size, seed=args.split_seed
    )
    print("\n".join(rows))
    return 0


def _run_blocks(args: argparse.Namespace) -> int:
    from attngraft.blocks import BLOCKS, create_block
    from attngraft.models import count_parameters

    validation.positive_int(args.dim, "--dim")
    validation.at_most(args.dim, "--dim", MAX_DIM, "a block's weights grow with its square")
    print(f"{'name':<16}{'family':<16}{'input':<16}{'params@' + str(args.dim):>12}")
    for name in BLOCKS.names():
        try:
            block = create_block(name, args.dim)
        except ValueError as error:  # e.g. a width its default heads do not divide: say so on its row
            print(f"{name:<16}{'':<16}{'':<16}{'-':>12}  (not at --dim {args.dim}: {error})")
            continue
        params = count_parameters(block)
        shape = "(B, N, C)" if block.layout == "tokens" else "(B, C, H, W)"
        print(f"{name:<16}{block.family:<16}{shape:<16}{params:>12,}")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from attngraft.models import MODELS, count_parameters, count_used_parameters, create_model, flops, list_models

    names = list_models(args.pattern)
    if not names:
        raise UnknownNameError(f"no model matches {args.pattern!r}; models: {', '.join(list_models())}")
    print(f"{'name':<26}{'family':<8}{'input':>10}{'params':>14}{'used':>14}{'GFLOPs':>10}{'GMACs':>9}")
    for name in names:
        spec = MODELS.get(name)
        model = create_model(name)
        count = flops(model, (1, spec.in_chans, spec.image_size, spec.image_size))
        size = f"{spec.in_chans}x{spec.image_size}x{spec.image_size}"
        params = f"{count_parameters(model):>14,}{count_used_parameters(model):>14,}"
        print(f"{name:<26}{spec.family:<8}{size:>10}{params}{count / 1e9:>10.3f}{count / 2e9:>9.3f}")
    return 0


def _run_graft_info(args: argparse.Namespace) -> int:
    from attngraft.grafting import build, load_spec, summarize

    spec = load_spec(args.spec)
    if args.download:
        spec["download"] = True
    print(summarize(build(spec)))
    return 0


def _run_study(args: argparse.Namespace) -> int:
    import yaml

    from attngraft.study import StudyOptions, default_directory, list_studies, load_study, run_study
    from attngraft.study.run import plan_study, publish

    if args.list:
        print("\n".join(list_studies()))
        return 0
    overrides = {}
    for assignment in args.set:
        key, equals, value = assignment.partition("=")
        if not equals or not key:
            raise ConfigError(f"--set {assignment!r}: expected NAME=VALUE")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {assignment!r}: the value is not YAML ({' '.join(str(error).split())})") from None
    if args.data_dir is not None:
        validation.existing_directory(args.data_dir, "--data-dir")
    if args.publish and args.cells:
        raise ConfigError("--publish takes the whole study: run it without --cells")
    study = load_study(args.name, args.profile, overrides)
    options = StudyOptions(
        out=Path(args.out) if args.out else None,
        resume=args.resume,
        backbone_weights=args.backbone_weights,
        cells=_cells(args.cells),
        data_dir=args.data_dir,
        progress=not args.no_progress,
        command=shlex.join(["attngraft", *args.argv]),
    )
    out = options.out or default_directory(study)
    if args.out:
        validation.output_path(args.out, "--out", directory=True)
    if args.plan:
        for run in plan_study(study, options):  # every cell's settings checked, nothing trained
            print(f"{run.key:<48}{run.cell.epochs:>4} epochs  {run.cell.label}")
        return 0
    try:
        run_study(study, options)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept in {out}; continue with --resume", file=sys.stderr)
        return 130
    print((out / "results.md").read_text())
    print(f"results, plots and logs: {out}")
    if args.publish:
        written = publish(out, Path(args.publish))
        print(f"published {len(written)} files to {args.publish}")
    return 0


def _cells(text: str | None) -> list[str] | None:
    """``--cells a,b``: the names; None without the option."""
    if text is None:
        return None
    cells = [cell.strip() for cell in text.split(",") if cell.strip()]
    if not cells:
        raise ConfigError(f"--cells {text!r}: expected comma-separated cell names")
    return cells


def _run_explain(args: argparse.Namespace) -> int:
    from attngraft.explain import DEFAULT_METHODS, AttributionSettings, ExplainSettings, explain_checkpoint

    if args.images is not None:
        validation.positive_int(args.images, "--images")
        validation.at_most(args.images, "--images", MAX_EXPLAIN_IMAGES, "each gets its own figure")
    validation.non_negative_int(args.per_class, "--per-class")
    validation.at_most(args.per_class, "--per-class", MAX_EXPLAIN_IMAGES // 10, "a grid per class")
    validation.positive_int(args.steps, "--steps")
    validation.at_most(args.steps, "--steps", MAX_STEPS, "each step is a forward and backward pass per image")
    if args.out:
        validation.output_path(args.out, "--out", directory=True)
    if args.per_class and (args.paths or args.images is not None):
        raise ConfigError("--per-class picks test images itself: use it without --images and --paths")
    settings = ExplainSettings(
        methods=[method.strip() for method in args.methods.split(",") if method.strip()]
        if args.methods
        else DEFAULT_METHODS,
        attribution=AttributionSettings(steps=args.steps, gradcam_layer=args.gradcam_layer),
        layers=args.layers,
        heads=args.heads,
        query=_pixel(args.query) if args.query else None,
    )
    out = Path(args.out) if args.out else _explain_directory(Path(args.ckpt_path))
    figures = explain_checkpoint(
        args.ckpt_path,
        out,
        settings=settings,
        config=args.config,
        data_dir=args.data_dir,
        images=args.images or 8,
        paths=args.paths or (),
        per_class=args.per_class,
        progress=not args.no_progress,
    )
    print(f"wrote {len(figures)} figures and explanations.json to {out}")
    return 0


def _run_cost(args: argparse.Namespace) -> int:
    import torch

    from attngraft.study.cost import DESIGNS, CostConfig, check_side, design_name
    from attngraft.study.cost_report import available_memory_bytes, cost_rows, write_cost_report

    sizes = sorted(set(_positive_list(args.sizes, "--sizes")))
    validation.output_path(args.out, "--out", directory=True)
    names = DESIGNS.names()
    if args.blocks is not None:
        names = [name.strip() for name in args.blocks.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--blocks {args.blocks!r}: name at least one design ({', '.join(DESIGNS.names())})")
    designs = list(dict.fromkeys(design_name(name) for name in names))  # unknown names list the valid ones
    validation.number(args.measure_mib, "--measure-mib", minimum=0)
    if args.budget_gb is not None:
        validation.number(args.budget_gb, "--budget-gb", above=0)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    try:
        config = CostConfig(args.dim, args.heads, args.patch, args.kernel, args.window)
        for side in sizes:
            check_side(side, config)
        device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
        free = available_memory_bytes(device)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(str(error)) from None
    budget = int(args.budget_gb * 2**30) if args.budget_gb is not None else free
    measure_bytes = min(int(args.measure_mib * 2**20), free)  # never more than the device can give
    rows = cost_rows(designs, sizes, config, measure_bytes=measure_bytes, budget_bytes=budget, device=device)
    out = Path(args.out)
    summary = write_cost_report(
        out,
        rows,
        config=config,
        budget_bytes=budget,
        measure_bytes=measure_bytes,
        command=shlex.join(["attngraft", *args.argv]),
        device=device,
    )
    print(summary)
    print(f"table, CSV/JSON and plots: {out}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from attngraft.export import check_destination, dataset_images, export_model, load_network, random_images

    check_destination(args.out, args.format)  # before the model is loaded
    validation.integer(args.images, "--images", minimum=2)
    validation.at_most(args.images, "--images", MAX_CHECK_IMAGES, "they are checked in one batch")
    for option, value in (("--image-size", args.image_size), ("--in-chans", args.in_chans)):
        if value is not None:
            validation.positive_int(value, option)
    validation.number(args.tolerance, "--tolerance", above=0)
    validation.output_path(args.out, "--out", directory=False)
    network = load_network(args.source)
    if args.random:
        images = random_images(network, count=args.images, image_size=args.image_size, in_chans=args.in_chans)
    else:
        images = dataset_images(
            network, dataset=args.dataset, data_dir=args.data_dir, count=args.images, image_size=args.image_size
        )
    report = export_model(network, args.out, format=args.format, images=images, tolerance=args.tolerance)
    shape = "x".join(str(size) for size in report.input_shape)
    print(f"wrote {report.path} ({report.exporter}; input N x {shape}, batch dimension dynamic)")
    print(f"max abs diff from eager PyTorch: {report.max_abs_diff:.3g} at batch sizes {list(report.batch_sizes)}")
    return 0


def _positive_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated positive integers") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option} {text!r}: expected comma-separated positive integers")
    return values


def _explain_directory(checkpoint: Path) -> Path:
    """``runs/explain/<run>-<version>-<checkpoint>`` for ``runs/<run>/<version>/checkpoints/<checkpoint>.ckpt``."""
    if checkpoint.parent.name == "checkpoints":
        version = checkpoint.parent.parent
        return Path("runs") / "explain" / f"{version.parent.name}-{version.name}-{checkpoint.stem}"
    return Path("runs") / "explain" / checkpoint.stem


def _pixel(text: str) -> tuple[int, int]:
    row, comma, col = text.partition(",")
    if not comma or not row.strip().isdigit() or not col.strip().isdigit():
        raise ConfigError(f"--query {text!r}: expected ROW,COL in image pixels, e.g. 14,14")
    return int(row), int(col)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and no abbreviated options.

    Errors read ``attngraft <command>: error: <message>`` (the usage is in ``--help``); ``--profil`` must not
    silently mean ``--profile``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    @override
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _VersionAction(argparse.Action):
    """``--version``: looks the version up only when asked (``importlib.metadata`` is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    @override
    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import attngraft

        print(f"attngraft {attngraft.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attngraft`` command."""
    parser = _Parser(prog="attngraft", description="Add attention to vision models.")
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress (staging, downloads); a failure shows its traceback"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    data = commands.add_parser("data", help="locate a dataset and print its splits, classes and statistics")
    data.add_argument("name", nargs="?", default="fashion-mnist", help="dataset name (default: fashion-mnist)")
    data.add_argument("--data-dir", help="directory searched first for the files")
    data.add_argument("--download", action="store_true", help="download with torchvision if not found")
    data.add_argument("--list", action="store_true", help="list the registered datasets")
    data.add_argument("--val-size", type=_count_or_fraction, help="validation images, a count or a fraction")
    data.add_argument(
        "--test-size", type=_count_or_fraction, help="test images of a flat image folder (count/fraction)"
    )
    data.add_argument("--split-seed", type=int, default=0, help="seed of the split (default: 0)")
    data.set_defaults(handler=_run_data)

    blocks = commands.add_parser("blocks", help="list the attention blocks: family, input layout, parameters")
    blocks.add_argument("--dim", type=int, default=64, help="channel dim for the parameter count (default: 64)")
    blocks.set_defaults(handler=_run_blocks)

    models = commands.add_parser("models", help="list the models: family, default input, parameters, FLOPs")
    models.add_argument("pattern", nargs="?", help="glob over model names, e.g. 'sasa_*'")
    models.set_defaults(handler=_run_models)

    graft_info = commands.add_parser("graft-info", help="build a graft spec; print its grafts and parameter counts")
    graft_info.add_argument("spec", help="YAML graft spec, or a packaged one (configs/grafts/<name>)")
    graft_info.add_argument("--download", action="store_true", help="allow downloading imagenet weights")
    graft_info.set_defaults(handler=_run_graft_info)

    study = commands.add_parser("study", help="run a reference study: train, test and measure its cells; tables, plots")
    study.add_argument("name", nargs="?", default="graft", help="study name (see --list) or YAML file")
    study.add_argument("--profile", default="quick", help="quick (default, CPU minutes) or full (the reference)")
    study.add_argument("--out", help="results directory (default: runs/studies/<name>-<profile>)")
    study.add_argument("--resume", action="store_true", help="keep the finished runs in --out and continue")
    study.add_argument("--backbone-weights", help="weights of the pretrained cells' backbone: a file, or imagenet")
    study.add_argument("--cells", help="comma-separated cells to run (with the cells they take weights from)")
    study.add_argument("--data-dir", help="directory searched first for the datasets' files")
    study.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="set a profile variable")
    study.add_argument("--publish", metavar="DIR", help="copy the tables, plots, config and environment to DIR")
    study.add_argument("--plan", action="store_true", help="check every cell's settings; print the runs, run nothing")
    study.add_argument("--list", action="store_true", help="list the studies")
    study.add_argument("--no-progress", action="store_true", help="no progress bar")
    study.set_defaults(handler=_run_study)

    explain = commands.add_parser(
        "explain", help="attributions (Captum) and attention maps of a checkpoint's predictions, over the images"
    )
    explain.add_argument("--ckpt_path", "--ckpt-path", required=True, help="checkpoint of `attngraft fit`")
    explain.add_argument("--config", help="the run's config (data section); default: config.yaml of its run")
    explain.add_argument("--out", help="figure directory (default: runs/explain/<run>-<version>-<checkpoint>)")
    chosen = explain.add_mutually_exclusive_group()
    chosen.add_argument("--images", type=int, help="explain the first N test images (default 8)")
    chosen.add_argument("--paths", nargs="+", metavar="IMAGE", help="explain these image files")
    explain.add_argument("--per-class", type=int, default=0, metavar="K", help="K test images per class, a grid each")
    explain.add_argument("--methods", help="comma-separated (default: ig,saliency,occlusion,gradcam,attention)")
    explain.add_argument("--layers", action="store_true", help="attention maps of every layer and map block")
    explain.add_argument("--heads", action="store_true", help="one attention map per head as well")
    explain.add_argument("--query", metavar="ROW,COL", help="map blocks' query pixel (default: most attributed)")
    explain.add_argument("--gradcam-layer", help="module path of GradCAM's layer (default: last conv stage)")
    explain.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps (default: 32)")
    explain.add_argument("--data-dir", help="directory searched first for the dataset's files")
    explain.add_argument("--no-progress", action="store_true", help="no progress bar")
    explain.set_defaults(handler=_run_explain)

    cost = commands.add_parser("cost", help="attention cost vs image size: formulas and measurements; table, plot")
    cost.add_argument("--sizes", default="28,32,64,128,224", help="image sides R (default: 28,32,64,128,224)")
    cost.add_argument(
        "--blocks",
        help="designs (default: all: graph, local, local_relation, mhsa (alias pixel_vit), non_local, vit, window)",
    )
    cost.add_argument("--dim", type=int, default=64, help="channels C (default: 64)")
    cost.add_argument("--heads", type=int, default=8, help="attention heads, the relation layer's groups (default: 8)")
    cost.add_argument("--patch", type=int, default=4, help="ViT patch side p (default: 4)")
    cost.add_argument("--kernel", type=int, default=7, help="local attention's odd kernel side k (default: 7)")
    cost.add_argument("--window", type=int, default=7, help="Swin window side w (default: 7)")
    cost.add_argument("--budget-gb", type=float, help="memory budget to mark (default: the device's free memory)")
    cost.add_argument(
        "--measure-mib",
        type=float,
        default=2048,
        help="measure sizes whose matrices and estimated peak (8× activations) fit (default 2048, at most free memory)",
    )
    cost.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to measure (auto: GPU if any)"
    )
    cost.add_argument("--out", default="runs/cost", help="output directory (default: runs/cost)")
    cost.set_defaults(handler=_run_cost)

    export = commands.add_parser(
        "export", help="a saved model or checkpoint as torch.export, TorchScript or ONNX, checked against eager"
    )
    export.add_argument("source", help="a directory of attngraft.save, or a checkpoint of attngraft fit")
    export.add_argument("--format", required=True, choices=["exported", "torchscript", "onnx"], help="the file kind")
    export.add_argument("--out", required=True, help="the file to write (.pt2 for exported)")
    export.add_argument("--dataset", default="fashion-mnist", help="check on its first test images (fashion-mnist)")
    export.add_argument("--data-dir", help="directory searched first for the dataset's files")
    export.add_argument("--random", action="store_true", help="check on random images instead of test images")
    export.add_argument("--images", type=int, default=8, help="check images (default: 8)")
    export.add_argument("--image-size", type=int, help="image side (default: the model's, else the dataset's)")
    export.add_argument("--in-chans", type=int, help="input channels, with --random (default: the model's)")
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed logit difference (1e-4)")
    export.set_defaults(handler=_run_export)

    for command, purpose in (
        ("fit", "train a recipe (LightningCLI: --config RECIPE.yaml, --trainer.max_epochs N, ...)"),
        ("validate", "evaluate a checkpoint on the validation split (--ckpt_path)"),
        ("test", "evaluate a checkpoint on the test split (--ckpt_path)"),
        ("predict", "class probabilities for the test split (--ckpt_path)"),
        ("lr-find", "sweep the learning rate; save the plot; print the steepest-descent rate"),
    ):
        commands.add_parser(command, help=purpose, add_help=False)
    return parser


TRAIN_COMMANDS = ("fit", "validate", "test", "predict", "lr-find")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be replaced, e.g. by pytest)."""

    @override
    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _run_training(command: str, args: Sequence[str], *, verbose: bool = False) -> int:
    """``fit|validate|test|predict|lr-find``: LightningCLI parses the rest (``--config``, ``--trainer.*``)."""
    package_logger = logging.getLogger("attngraft")
    if not any(isinstance(handler, _StderrHandler) for handler in package_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    from attngraft._help_cache import cached_help, is_plain_help

    if is_plain_help(args):
        return cached_help(command, args, lambda: _lightning(command, args))
    try:
        return _lightning(command, args)
    except AttngraftError as error:
        return _user_error(command, error, verbose=verbose)
    except OSError as error:  # the file system said no (permissions, a read-only place, a vanished file)
        return _user_error(command, _os_error(error), verbose=verbose)


def _lightning(command: str, args: Sequence[str]) -> int:
    from attngraft.train.cli import run_lightning

    return run_lightning(command, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attngraft`` command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((index for index, word in enumerate(argv) if not word.startswith("-")), None)
    if command is not None and argv[command] in TRAIN_COMMANDS and set(argv[:command]) <= {"-v", "--verbose"}:
        verbose = bool(argv[:command])  # -v before the command: a failure shows its traceback
        return _run_training(argv[command], argv[command + 1 :], verbose=verbose)  # training always logs progress
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the subcommand's parser, so the error names the command
        _command_parser(parser, getattr(args, "command", None)).error(f"unrecognized arguments: {' '.join(extras)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        print("attngraft: error: name a command (see above)", file=sys.stderr)
        return 2
    args.argv = argv
    try:
        return handler(args)
    except AttngraftError as error:
        return _user_error(args.command, error, verbose=args.verbose)
    except OSError as error:  # the file system said no (permissions, a read-only place, a vanished file)
        return _user_error(args.command, _os_error(error), verbose=args.verbose)


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The parser of subcommand ``command`` (the top-level parser when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _os_error(error: OSError) -> AttngraftError:
    """An operating-system error as a user error naming the path and the reason."""
    place = f"{error.filename}: " if error.filename else ""
    user_error = AttngraftError(f"{place}{error.strerror or error}")
    user_error.__cause__ = error
    return user_error


def _user_error(command: str, error: AttngraftError, *, verbose: bool) -> int:
    """Prints ``attngraft <command>: error: <message>`` (and the traceback with ``-v``); returns exit status 2."""
    if verbose:
        traceback.print_exception(error)
    print(f"attngraft {command}: error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
