"""The validation toolkit: each check accepts what it should and names what it refuses, in one message shape."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from attngraft import validation
from attngraft.errors import ConfigError, SpecError

NUMBER_CASES = [
    # (check, keyword arguments, good values, bad values, expected words)
    (
        validation.positive_int,
        {},
        [1, 7, 3.0],
        [0, -3, 2.5, "four", True, None, math.nan, math.inf],
        "a positive integer",
    ),
    (validation.non_negative_int, {}, [0, 5], [-1, 0.5, "0"], "an integer >= 0"),
    (validation.odd, {}, [1, 3, 7.0], [0, 2, -3, 4.0, "7"], "a positive odd integer"),
    (validation.positive_number, {}, [1e-9, 2, 0.5], [0, -1, math.nan, math.inf, "1e-3"], "a positive number"),
    (validation.number, {"minimum": 0, "below": 1}, [0, 0.99], [1, -0.1, math.nan], "a finite number at least 0"),
    (validation.fraction_or_count, {}, [0, 10, 0.1, 5.0], [-1, 1.5, "0.1", math.nan], "a count >= 0 or a fraction"),
]


@pytest.mark.parametrize(("check", "options", "good", "bad", "words"), NUMBER_CASES, ids=lambda value: "")
def test_numbers(check, options: dict, good: list, bad: list, words: str) -> None:
    for value in good:
        assert check(value, "x", **options) == value
    for value in bad:
        with pytest.raises(ConfigError, match=f"^x {re.escape(validation.show(value))}: expected {words}"):
            check(value, "x", **options)


def test_a_count_must_stay_below_the_total() -> None:
    assert validation.fraction_or_count(99, "data.val_size", total=100) == 99
    with pytest.raises(ConfigError, match=r"data.val_size 100: expected a count in \[0, 100\)"):
        validation.fraction_or_count(100, "data.val_size", total=100)


def test_choices_name_the_closest_and_keep_types() -> None:
    assert validation.choice("cosine", "model.schedule", ["cosine", "onecycle"]) == "cosine"
    with pytest.raises(ConfigError, match=r"model.schedule 'cosin': expected one of cosine, onecycle \(did you mean"):
        validation.choice("cosin", "model.schedule", ["cosine", "onecycle"])
    with pytest.raises(ConfigError, match=r"data.channels true: expected one of 1, 3"):
        validation.choice(True, "data.channels", [1, 3])


def test_unknown_keys_are_named_with_the_closest() -> None:
    validation.reject_unknown(["batch_size"], "data", ["batch_size", "val_size"])
    with pytest.raises(ConfigError, match=r"data: unknown key 'bach_size' \(did you mean 'batch_size'\?\); valid keys"):
        validation.reject_unknown(["bach_size"], "data", ["batch_size", "val_size"])


def test_bounds_say_why() -> None:
    validation.at_most(10, "--dim", 10, "memory")
    with pytest.raises(ConfigError, match=r"--dim 11: expected at most 10 \(memory\)"):
        validation.at_most(11, "--dim", 10, "memory")


def test_paths_are_named_for_what_is_wrong_with_them(tmp_path: Path) -> None:
    (tmp_path / "empty").touch()
    (tmp_path / "file").write_text("x")
    cases = [
        (validation.existing_file, tmp_path / "nope", "no such file"),
        (validation.existing_file, tmp_path, "a directory, expected a file"),
        (validation.existing_file, tmp_path / "empty", "an empty file"),
        (validation.existing_directory, tmp_path / "nope", "no such directory"),
        (validation.existing_directory, tmp_path / "file", "a file, expected a directory"),
    ]
    for check, path, message in cases:
        with pytest.raises(ConfigError, match=f"^--x {re.escape(str(path))}: {message}"):
            check(path, "--x")
    assert validation.existing_file(tmp_path / "file", "--x") == tmp_path / "file"
    with pytest.raises(ConfigError, match="an existing file, expected a directory"):
        validation.output_path(tmp_path / "file", "--out", directory=True)
    with pytest.raises(ConfigError, match="an existing directory, expected a file path"):
        validation.output_path(tmp_path, "--out", directory=False)
    with pytest.raises(ConfigError, match="is a file, so nothing can be written under it"):
        validation.output_path(tmp_path / "file" / "inside", "--out", directory=True)
    assert validation.output_path(tmp_path / "new" / "dir", "--out", directory=True) == tmp_path / "new" / "dir"
    assert validation.output_path(tmp_path / "file", "--out", directory=False) == tmp_path / "file"  # replaced


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "an empty file"),
        (b"# only a comment\n", "holds no YAML content"),
        (b"name: caf\xe9\n", "not UTF-8 text (byte 9)"),
        (b"a: [1,\n", "not valid YAML (expected the node content, but found '<stream end>' at line 2, column 1)"),
    ],
)
def test_yaml_files_are_read_or_named(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=f"^study file {re.escape(str(path))}: {re.escape(message)}"):
        validation.read_yaml(path, "study file", error=SpecError)
    path.write_text("a: 1\n")
    assert validation.read_yaml(path, "study file") == {"a": 1}
