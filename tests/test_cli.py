import re
import subprocess
import sys
from pathlib import Path

import pytest

from attngraft import __version__
from attngraft.cli import main
from attngraft.recipes import packaged_directory

from .data.fixtures import make_idx_arrays, write_idx_dataset

CONFIGS = packaged_directory() / "grafts"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"attngraft {__version__}"


def test_data_prints_location_splits_and_class_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_idx_dataset(tmp_path, make_idx_arrays(num_train=5_100, num_test=30))
    assert main(["data", "mnist", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"found in     {tmp_path}" in out
    assert "train 100 + val 5000 (official train 5100), test 30" in out
    assert "image shape  1x28x28" in out
    row = re.search(r"^\s+9\s+9 - nine\s+(\d+)\s+(\d+)\s+3$", out, re.MULTILINE)  # train, val, test
    assert row is not None
    assert int(row[1]) + int(row[2]) == 510


def test_data_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "--list"]) == 0
    assert "fashion-mnist" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "fashion_mnist"], "unknown dataset 'fashion_mnist'. Did you mean 'fashion-mnist'"),
        (["data", "cifar10", "--data-dir", "/nonexistent"], "dataset 'cifar10' not found"),
        (["models", "vgg*"], "no model matches 'vgg*'; models: deepvit"),
        (["graft-info", "/nonexistent/spec.yaml"], "graft spec /nonexistent/spec.yaml: no such file"),
        (
            ["graft-info", str(CONFIGS.parent / "README.md")],
            f"graft spec {CONFIGS.parent / 'README.md'}: not valid YAML (mapping values are not allowed here at line",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attngraft {argv[0]}: error: {message}")
    assert err.count("\n") == 1


def test_verbose_shows_the_traceback_of_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v", "data", "fashion_mnist"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("attngraft data: error: unknown dataset 'fashion_mnist'")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["blocks", "--dim", "x"], "attngraft blocks: error: argument --dim: invalid int value: 'x'"),
        (["nope"], "attngraft: error: argument COMMAND: invalid choice: 'nope'"),
        (["data", "--val-size", "-2"], "attngraft data: error: argument --val-size: '-2': expected a count >= 0"),
    ],
)
def test_argument_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_corrupt_file_exits_2_without_traceback(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, make_idx_arrays())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    result = subprocess.run(
        [sys.executable, "-m", "attngraft.cli", "data", "mnist", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train-labels-idx1-ubyte.gz: truncated or corrupt gzip" in result.stderr


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: attngraft" in capsys.readouterr().out


def test_blocks_lists_every_block_with_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    from attngraft.blocks import list_blocks

    assert main(["blocks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "input", "params@64"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == list_blocks()
    assert re.search(r"^mhsa\s+self-attention\s+\(B, N, C\)\s+16,640$", rows["mhsa"])
    assert re.search(r"^se\s+channel\s+\(B, C, H, W\)\s+1,096$", rows["se"])


def test_models_table_lists_parameters_and_flops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resnet*"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {"resnet18", "resnet26", "resnet38", "resnet50"}
    _, family, size, params, used, gflops, gmacs = rows["resnet50"]
    assert (family, size, params, used) == ("resnet", "3x224x224", "25,557,032", "25,557,032")
    assert float(gflops) == pytest.approx(2 * float(gmacs), abs=0.002)


def test_graft_info_prints_counts_and_grafts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graft-info", str(CONFIGS / "resnet18_non_local_insert.yaml")]) == 0
    out = capsys.readouterr().out
    assert "backbone     torchvision/resnet18 (weights: random)" in out
    assert re.search(r"^parameters   total 11,834,954  trainable 664,714 \(5.6%\)  frozen 11,170,240$", out, re.M)
    assert re.search(r"^insert   non_local   after layer3\s+132,480  256 ch, 4×4$", out, re.M)
    assert re.search(r"^new      classifier  fc\s+5,130", out, re.M)


def test_graft_info_on_a_spec_that_does_not_fit_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("backbone: torchvision/resnet18\ngraft:\n  - {mode: head, block: mhsa, stage: layer7}\n")
    assert main(["graft-info", str(spec)]) == 2
    assert "no module 'layer7'; stages: relu (64 ch, /2), layer1" in capsys.readouterr().err
