"""Bad inputs, tried: every case runs ``attngraft`` as a user would and records what the user is told.

Each case is a command with one thing wrong (files and folders made fresh in a temporary directory), and the words
the message must hold. A case passes when the command exits with status 2, prints exactly one line on stderr, that
line holds the expected words, and no traceback or Python exception name reaches the user. Warnings (a case whose
input is allowed but doubtful) must exit 0 and log the expected words.

    python scripts/reliability.py                  # run every case, print a summary (exit 1 if any fails)
    python scripts/reliability.py --markdown FILE  # also write the table of cases and messages (docs/reliability.md)
    python scripts/reliability.py --quick          # only the cases that do not start Lightning

``tests/test_reliability.py`` runs the same cases.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Case:
    """One bad input: its class, the command (``{tmp}`` is the case's temporary directory) and the expected words."""

    kind: str
    argv: tuple[str, ...]
    expected: str
    setup: Callable[[Path], None] | None = None
    warning: bool = False  # allowed, but the user is warned (exit 0)
    training: bool = False  # starts Lightning (slower)


def _files(tmp: Path) -> None:
    """The bad files and folders the cases name."""
    import torch

    (tmp / "empty.yaml").touch()
    (tmp / "comments.yaml").write_text("# nothing here\n")
    (tmp / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    (tmp / "broken.yaml").write_text("cells: [1,\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "a_file").write_text("x")
    (tmp / "empty_dir").mkdir()
    (tmp / "empty.ckpt").touch()
    (tmp / "random.ckpt").write_bytes(os.urandom(2048))
    (tmp / "text.ckpt").write_text("this is not a checkpoint\n" * 20)
    torch.save({"w": torch.ones(2)}, tmp / "weights.ckpt")
    torch.save({"state_dict": {}, "global_step": 0, "hook": subprocess.Popen}, tmp / "code.ckpt")
    good = tmp / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64)}, "global_step": 1}, good)
    (tmp / "truncated.ckpt").write_bytes(good.read_bytes()[:-100])
    (tmp / "evil.yaml").write_text(
        "description: x\ndata: {train_augment: [{class_path: os.system, init_args: {command: 'touch pwned'}}]}\n"
        "profiles: {quick: {seeds: [0], epochs: {short: 1}}}\ncells: [{name: a, network: mnist_cnn, epochs: short}]\n"
    )
    (tmp / "four.yaml").write_text(
        "backbone: attngraft/resnet18\nin_chans: 1\nnum_classes: 10\nimage_size: 28\n"
        "graft: [{mode: head, block: graph, stage: layer3, num_heads: four}]\n"
    )
    (tmp / "unknown_block.yaml").write_text(
        "backbone: attngraft/resnet18\nin_chans: 1\nnum_classes: 10\nimage_size: 28\n"
        "graft: [{mode: head, block: graff, stage: layer3}]\n"
    )
    (tmp / "pickle.pt").write_bytes(pickle.dumps({"a": 1}))
    _one_class_folder(tmp / "one_class")
    _bomb_folder(tmp / "bomb")


def _one_class_folder(root: Path) -> None:
    from PIL import Image

    (root / "cat").mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (8, 8), (index, 0, 0)).save(root / "cat" / f"{index}.png")


def _bomb_folder(root: Path) -> None:
    """Two classes; one image declares 30,000 x 30,000 pixels (a decompression bomb) in a tiny file."""
    import struct
    import zlib

    from PIL import Image

    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for index in range(3):
            Image.new("RGB", (8, 8), (index, 0, 0)).save(root / name / f"{index}.png")
    side = 30_000
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    (root / "cat" / "bomb.png").write_bytes(png + b"\x00\x00\x00\x00IEND\xaeB`\x82")


RECIPE = "configs/resnet18_fashion_mnist.yaml"
TINY = ("--data.train_size", "64", "--data.val_size", "32", "--trainer.max_steps", "1")

CASES: tuple[Case, ...] = (
    # --- names that no registry knows ---------------------------------------------------------------------------
    Case("unknown name", ("data", "fashion_mnist"), "unknown dataset 'fashion_mnist'. Did you mean 'fashion-mnist'"),
    Case("unknown name", ("models", "vgg*"), "no model matches 'vgg*'; models: deepvit"),
    Case("unknown name", ("study", "graf"), "unknown study 'graf'"),
    Case("unknown name", ("study", "graft", "--profile", "fast"), "unknown profile 'fast'"),
    Case("unknown name", ("cost", "--blocks", "mhsa,locl"), "locl"),
    Case("unknown name", ("graft-info", "{tmp}/unknown_block.yaml"), "graff"),
    # --- command-line syntax ------------------------------------------------------------------------------------
    Case("argument syntax", ("blocks", "--dim", "x"), "argument --dim: invalid int value: 'x'"),
    Case("argument syntax", ("study", "graft", "--profil", "quick"), "unrecognized arguments: --profil quick"),
    Case("argument syntax", ("data", "--val-size", "-2"), "argument --val-size: '-2': expected a count >= 0"),
    Case("argument syntax", ("nope",), "argument COMMAND: invalid choice: 'nope'"),
    Case(
        "argument syntax",
        ("fit", "--config", RECIPE, "--trainer.max_epoch", "3"),
        "attngraft fit: error: unrecognized arguments: --trainer.max_epoch 3",
        training=True,
    ),
    Case(
        "argument syntax",
        ("fit", "--config", RECIPE, "--model.lr", "fast"),
        "model.lr",
        training=True,
    ),
    Case("argument syntax", ("study", "graft", "--set", "stage"), "--set 'stage': expected NAME=VALUE"),
    Case("argument syntax", ("study", "graft", "--set", "head_stage=[1,"), "the value is not YAML"),
    # --- numbers out of range, and bounds against absurd memory or time ----------------------------------------
    Case("number out of range", ("blocks", "--dim", "0"), "--dim 0: expected a positive integer"),
    Case("number out of range", ("blocks", "--dim", "100000"), "--dim 100000: expected at most 4,096"),
    Case("number out of range", ("data", "--val-size", "1.5"), "argument --val-size: '1.5': expected a count"),
    Case("number out of range", ("data", "--val-size", "70000"), "data.val_size 70000: expected a count in [0, 60000)"),
    Case("number out of range", ("cost", "--sizes", "0"), "--sizes '0': expected comma-separated positive integers"),
    Case("number out of range", ("cost", "--budget-gb", "0"), "--budget-gb 0.0: expected a finite number above 0"),
    Case("number out of range", ("cost", "--measure-mib", "nan"), "--measure-mib nan: expected a finite number"),
    Case(
        "number out of range",
        ("export", "{tmp}/empty_dir", "--format", "torchscript", "--out", "{tmp}/m.pt", "--images", "1"),
        "--images 1: expected an integer >= 2",
    ),
    Case(
        "number out of range",
        ("export", "{tmp}/empty_dir", "--format", "torchscript", "--out", "{tmp}/m.pt", "--images", "5000"),
        "--images 5000: expected at most 1,024",
    ),
    # --- files: missing, a folder, empty, not text, not YAML, the wrong shape -----------------------------------
    Case("file", ("study", "{tmp}/empty.yaml"), "study file {tmp}/empty.yaml: an empty file"),
    Case("file", ("study", "{tmp}/comments.yaml"), "holds no YAML content (empty, or only comments)"),
    Case("file", ("study", "{tmp}/latin1.yaml"), "latin1.yaml: not UTF-8 text (byte 9)"),
    Case("file", ("study", "{tmp}/broken.yaml"), "broken.yaml: not valid YAML ("),
    Case("file", ("study", "{tmp}/list.yaml"), "expected a mapping"),
    Case("file", ("graft-info", "{tmp}/nope.yaml"), "graft spec {tmp}/nope.yaml: no such file"),
    Case("file", ("graft-info", "{tmp}/empty_dir"), "graft spec {tmp}/empty_dir: a directory, expected a file"),
    Case("file", ("graft-info", "{tmp}/four.yaml"), "num_heads must be a positive integer, got 'four'"),
    Case("file", ("export", "{tmp}/nope", "--format", "onnx", "--out", "{tmp}/m.onnx"), "no such directory"),
    # --- checkpoints and weights: refused before anything reads them as code ------------------------------------
    Case(
        "checkpoint",
        ("test", "--config", RECIPE, "--ckpt_path", "{tmp}/nope.ckpt"),
        "nope.ckpt: no such file",
        training=True,
    ),
    Case(
        "checkpoint",
        ("test", "--config", RECIPE, "--ckpt_path", "{tmp}/empty_dir"),
        "a directory, not a checkpoint file",
        training=True,
    ),
    Case(
        "checkpoint",
        ("test", "--config", RECIPE, "--ckpt_path", "{tmp}/empty.ckpt"),
        "an empty file, not a checkpoint",
        training=True,
    ),
    Case(
        "checkpoint",
        ("test", "--config", RECIPE, "--ckpt_path", "{tmp}/truncated.ckpt"),
        "truncated.ckpt is corrupt or not a torch file",
        training=True,
    ),
    Case(
        "checkpoint",
        ("test", "--config", RECIPE, "--ckpt_path", "{tmp}/random.ckpt"),
        "random.ckpt is corrupt or not a torch file",
        training=True,
    ),
    Case(
        "checkpoint",
        ("predict", "--config", RECIPE, "--ckpt_path", "{tmp}/text.ckpt"),
        "text.ckpt is corrupt or not a torch file",
        training=True,
    ),
    Case(
        "checkpoint",
        ("test", "--config", RECIPE, "--ckpt_path", "{tmp}/weights.ckpt"),
        "not a Lightning checkpoint (no state_dict and global_step",
        training=True,
    ),
    Case(
        "checkpoint",
        ("test", "--config", RECIPE, "--ckpt_path", "{tmp}/code.ckpt"),
        "refused to load it: it holds pickled objects other than tensors",
        training=True,
    ),
    Case("checkpoint", ("test", "--config", RECIPE, "--ckpt_path", "best"), "give 'last'", training=True),
    Case("checkpoint", ("study", "graft", "--backbone-weights", "{tmp}/nope.safetensors"), "no file at"),
    # --- training settings that used to crash mid-run ------------------------------------------------------------
    Case(
        "training setting",
        ("fit", "--config", RECIPE, *TINY, "--data.image_size", "0"),
        "data.image_size 0: expected a positive integer",
        training=True,
    ),
    Case(
        "training setting",
        ("fit", "--config", RECIPE, *TINY, "--data.channels", "2"),
        "data.channels 2: expected 1 (grey) or 3 (RGB)",
        training=True,
    ),
    Case(
        "training setting",
        ("fit", "--config", RECIPE, *TINY, "--model.lr", "-1"),
        "model.lr -1.0: expected a positive",
        training=True,
    ),
    Case(
        "training setting",
        ("fit", "--config", RECIPE, *TINY, "--model.network", "{name: vit, num_heads: 5}"),
        "dim=64 is not divisible by num_heads=5",
        training=True,
    ),
    Case(
        "training setting",
        ("fit", "--config", RECIPE, *TINY, "--model.network", "{name: vit, patch_size: 5}"),
        "patch_size 5 must divide img_size 28",
        training=True,
    ),
    Case(
        "training setting",
        ("fit", "--config", RECIPE, *TINY, "--model.network", "hybrid_vit", "--data.image_size", "4"),
        "model.network cannot run on the data's 1x4x4 images (data.image_size)",
        training=True,
    ),
    Case(
        "training setting",
        ("fit", "--config", RECIPE, *TINY, "--run_name", "../elsewhere"),
        "--run_name '../elsewhere': expected a folder name under runs/",
        training=True,
    ),
    Case("file", ("fit", "--config", "{tmp}/latin1.yaml"), "--config {tmp}/latin1.yaml: not UTF-8 text", training=True),
    Case("file", ("fit", "--config", "{tmp}/empty.yaml"), "--config {tmp}/empty.yaml: an empty file", training=True),
    Case("file", ("fit", "--config", "{tmp}/list.yaml"), "expected a mapping of sections", training=True),
    # --- output paths -------------------------------------------------------------------------------------------
    Case(
        "output path", ("cost", "--out", "{tmp}/a_file"), "--out {tmp}/a_file: an existing file, expected a directory"
    ),
    Case("output path", ("study", "graft", "--out", "{tmp}/a_file"), "an existing file, expected a directory"),
    Case(
        "output path",
        ("export", "{tmp}/empty_dir", "--format", "exported", "--out", "{tmp}/m.onnx"),
        "expected a .pt2 file for --format exported",
    ),
    Case(
        "output path",
        ("export", "{tmp}/empty_dir", "--format", "torchscript", "--out", "{tmp}/empty_dir"),
        "an existing directory, expected a file path",
    ),
    # --- data: never a silent fall-back ---------------------------------------------------------------------------
    Case("data", ("data", "fashion-mnist", "--data-dir", "{tmp}/nope"), "--data-dir {tmp}/nope is not a directory"),
    Case("data", ("data", "cifar10", "--data-dir", "{tmp}/empty_dir"), "dataset 'cifar10' not found"),
    Case("data", ("study", "graft", "--data-dir", "{tmp}/nope"), "--data-dir {tmp}/nope: no such directory"),
    Case("data", ("data", "imagefolder", "--data-dir", "{tmp}/bomb"), "bomb.png: refused to decode it"),
    Case("data", ("data", "imagefolder", "--data-dir", "{tmp}/one_class"), "one class folder (cat/)", warning=True),
    # --- nothing executed from a config ---------------------------------------------------------------------------
    Case(
        "code in a config",
        ("study", "{tmp}/evil.yaml", "--out", "{tmp}/out", "--no-progress"),
        "'os.system' is not allowed: augmentations are torch.nn.modules.module.Module subclasses",
    ),
)


@dataclass(frozen=True)
class Outcome:
    """What one case printed, and whether it is what a user should get."""

    case: Case
    code: int
    message: str  # the stderr line, or the warning
    passed: bool
    why: str


def run_case(case: Case, tmp: Path) -> Outcome:
    """Runs ``attngraft ARGV`` in-process from ``tmp`` and judges what the user saw."""
    from attngraft.cli import main

    argv = [word.replace("{tmp}", str(tmp)) for word in case.argv]
    expected = case.expected.replace("{tmp}", str(tmp))
    errors, logs = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger().addHandler(handler)
    cwd = Path.cwd()
    try:
        os.chdir(tmp)
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exited:
                code = int(exited.code or 0)
            except Exception as error:  # a traceback would reach the user
                return Outcome(case, 1, f"{type(error).__name__}: {error}", False, "uncaught exception")
    finally:
        os.chdir(cwd)
        logging.getLogger().removeHandler(handler)
    lines = [line for line in errors.getvalue().splitlines() if line.strip() and not _is_log_line(line)]
    if case.warning:
        text = logs.getvalue() + errors.getvalue()
        found = next((line for line in text.splitlines() if expected in line), "")
        passed = code == 0 and bool(found)
        return Outcome(case, code, found.strip(), passed, "" if passed else f"exit {code}, warning not found")
    message = lines[-1] if lines else ""
    problems = [
        f"exit {code}, expected 2" * (code != 2),
        f"{len(lines)} error lines" * (len(lines) != 1),
        "expected words missing" * (expected not in message),
        "a traceback" * ("Traceback" in errors.getvalue()),
        "pwned" * (tmp / "pwned").exists(),
    ]
    why = ", ".join(problem for problem in problems if problem)
    return Outcome(case, code, message, not why, why)


def _is_log_line(line: str) -> bool:
    """Progress and log records (not the error line): Lightning's banners, attngraft's INFO lines."""
    return line.startswith(("INFO", "WARNING", "GPU available", "TPU available", "Seed set", "💡"))


def run_cases(cases: tuple[Case, ...] = CASES) -> list[Outcome]:
    """Runs every case in its own temporary directory, with the files of :func:`_files`."""
    outcomes = []
    with tempfile.TemporaryDirectory() as shared:
        cache = Path(shared) / "cache"
        saved_cache = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = str(cache)  # staging goes here, the user's cache stays untouched
        try:
            for index, case in enumerate(cases):
                tmp = Path(shared) / f"case{index}"
                tmp.mkdir()
                _files(tmp)
                outcomes.append(run_case(case, tmp))
        finally:
            if saved_cache is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = saved_cache
    return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    """The table of ``docs/reliability.md``: class, command, what the user is told."""
    passed = sum(outcome.passed for outcome in outcomes)
    rows = [
        "| class | command | what the user is told |",
        "|---|---|---|",
    ]
    for outcome in outcomes:
        command = " ".join(["attngraft", *outcome.case.argv]).replace("|", "\\|")
        message = _anonymous(outcome.message).replace("|", "\\|")
        verdict = "" if outcome.passed else f" **(fails: {outcome.why})**"
        rows.append(f"| {outcome.case.kind} | `{command}` | {message}{verdict} |")
    summary = (
        f"{len(outcomes)} cases; {passed} give one clear line (exit 2, or exit 0 with a warning where the input is "
        f"allowed); {len(outcomes) - passed} do not."
    )
    return summary + "\n\n" + "\n".join(rows) + "\n"


def _anonymous(text: str) -> str:
    """Temporary paths as ``{tmp}`` and ``{cache}``, so the table does not change from run to run."""
    import re

    text = re.sub(r"/tmp/[^/\s]+/case\d+", "{tmp}", text)
    return re.sub(r"/tmp/[^/\s]+/cache", "{cache}", text)


def main() -> int:
    """Runs the cases; prints failures and counts; writes the Markdown table when asked."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, help="write the table of cases and messages to this file")
    parser.add_argument("--quick", action="store_true", help="skip the cases that start Lightning")
    args = parser.parse_args()
    cases = tuple(case for case in CASES if not (args.quick and case.training))
    outcomes = run_cases(cases)
    failed = [outcome for outcome in outcomes if not outcome.passed]
    for outcome in failed:
        print(f"FAIL {' '.join(outcome.case.argv)}: {outcome.why}: {outcome.message}", file=sys.stderr)
    print(f"{len(outcomes)} cases, {len(outcomes) - len(failed)} clear, {len(failed)} not")
    if args.markdown:
        text = args.markdown.read_text() if args.markdown.exists() else ""
        marker = "<!-- cases: generated by scripts/reliability.py --markdown -->\n"
        head = text.split(marker)[0] if marker in text else text
        args.markdown.write_text(head + marker + markdown(outcomes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
