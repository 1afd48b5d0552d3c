"""One way to check what users give: numbers, choices, names, keys and paths, with one shape of message.

Every check returns the value (converted where it says so) or raises an :class:`~attngraft.errors.AttngraftError`
(by default :class:`~attngraft.errors.ConfigError`) whose message reads ``<what> <value>: expected <expectation>``,
e.g. ``data.image_size 0: expected a positive integer`` or ``--dim -3: expected a positive integer``; the command
line prints it as ``attngraft <command>: error: <message>`` and exits with status 2. ``what`` names the option or
key as the user wrote it.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from attngraft.errors import AttngraftError, ConfigError

ErrorType = type[AttngraftError]


def show(value: object) -> str:
    """A value as the user wrote it: numbers and paths plainly, strings quoted, anything else as its repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float | Path):
        return str(value)
    return repr(value)


def fail(what: str, value: object, expected: str, error: ErrorType = ConfigError) -> AttngraftError:
    """Returns the error "WHAT VALUE: expected EXPECTED", to be raised by the caller."""
    return error(f"{what} {show(value)}: expected {expected}")


def integer(value: object, what: str, *, minimum: int | None = None, error: ErrorType = ConfigError) -> int:
    """An integer (an integral float, as YAML or a command line may give it, is accepted), >= ``minimum`` if given."""
    number_ = _finite(value)
    if number_ is None or not number_.is_integer() or (minimum is not None and number_ < minimum):
        raise fail(what, value, _integer_words(minimum), error)
    return int(number_)


def positive_int(value: object, what: str, *, error: ErrorType = ConfigError) -> int:
    """An integer >= 1."""
    return integer(value, what, minimum=1, error=error)


def non_negative_int(value: object, what: str, *, error: ErrorType = ConfigError) -> int:
    """An integer >= 0."""
    return integer(value, what, minimum=0, error=error)


def odd(value: object, what: str, *, error: ErrorType = ConfigError) -> int:
    """A positive odd integer (a kernel side)."""
    number_ = _finite(value)
    if number_ is None or not number_.is_integer() or number_ < 1 or int(number_) % 2 == 0:
        raise fail(what, value, "a positive odd integer", error)
    return int(number_)


def number(
    value: object,
    what: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    error: ErrorType = ConfigError,
) -> float:
    """A finite number: at least ``minimum``, above ``above``, at most ``maximum``, below ``below`` (each if given)."""
    bounds = [f"at least {minimum:g}"] if minimum is not None else []
    bounds += [f"above {above:g}"] if above is not None else []
    bounds += [f"at most {maximum:g}"] if maximum is not None else []
    bounds += [f"below {below:g}"] if below is not None else []
    number_ = _finite(value)
    if (
        number_ is None
        or (minimum is not None and number_ < minimum)
        or (above is not None and number_ <= above)
        or (maximum is not None and number_ > maximum)
        or (below is not None and number_ >= below)
    ):
        raise fail(what, value, "a finite number" + (f" {' and '.join(bounds)}" if bounds else ""), error)
    return number_


def positive_number(value: object, what: str, *, error: ErrorType = ConfigError) -> float:
    """A finite number > 0."""
    number_ = _finite(value)
    if number_ is None or number_ <= 0:
        raise fail(what, value, "a positive number", error)
    return number_


def at_most(value: int | float, what: str, bound: int | float, reason: str, *, error: ErrorType = ConfigError) -> None:
    """Refuses ``value`` above ``bound``, saying why the bound exists (e.g. the memory it would take)."""
    if value > bound:
        raise fail(what, value, f"at most {bound:,} ({reason})", error)


def fraction_or_count(
    value: object, what: str, *, total: int | None = None, allow_zero: bool = True, error: ErrorType = ConfigError
) -> int | float:
    """A count (an integer >= 0, or >= 1 without ``allow_zero``) or a fraction in (0, 1).

    With ``total`` (the number of items the count is taken from), a count must also be below ``total``.
    """
    low = 0 if allow_zero else 1
    expected = f"a count >= {low} or a fraction in (0, 1)"
    if total is not None:
        expected = f"a count in [{low}, {total}) or a fraction in (0, 1) of the {total:,} items"
    number_ = _finite(value)
    if number_ is None:
        raise fail(what, value, expected, error)
    if not number_.is_integer():
        if not 0 < number_ < 1:
            raise fail(what, value, expected, error)
        return number_
    if number_ < low or (total is not None and number_ >= total):
        raise fail(what, value, expected, error)
    return int(number_)


def choice(
    value: object, what: str, choices: Sequence[object], *, words: str | None = None, error: ErrorType = ConfigError
) -> Any:
    """One of ``choices``, of the same type (True is not the choice 1).

    Otherwise an error listing the choices (or saying ``words``) and, for names, the closest one.
    """
    if value in choices and type(value) in {type(option) for option in choices}:
        return value
    listed = words or f"one of {', '.join(map(str, choices))}"
    names = [str(option) for option in choices if isinstance(option, str)]
    raise error(f"{what} {show(value)}: expected {listed}{_did_you_mean(value, names) if names else ''}")


def reject_unknown(keys: Iterable[object], what: str, valid: Sequence[str], *, error: ErrorType = ConfigError) -> None:
    """Refuses the first key not in ``valid``, naming the closest valid key and listing them all.

    ``what`` names the mapping (``data``, ``the spec``); the message reads
    ``data: unknown key 'bach_size' (did you mean 'batch_size'?); valid keys: ...``.
    """
    for key in keys:
        if key not in valid:
            hint = _did_you_mean(key, valid)
            raise error(f"{what}: unknown key {show(key)}{hint}; valid keys: {', '.join(valid)}")


def existing_file(path: str | Path, what: str, *, error: ErrorType = ConfigError) -> Path:
    """A readable, non-empty regular file; each way of not being one has its own message."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path}: no such file")
    if path.is_dir():
        raise error(f"{what} {path}: a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise error(f"{what} {path}: not readable (permission denied)")
    if path.stat().st_size == 0:
        raise error(f"{what} {path}: an empty file")
    return path


def existing_directory(path: str | Path, what: str, *, error: ErrorType = ConfigError) -> Path:
    """A readable directory."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path}: no such directory")
    if not path.is_dir():
        raise error(f"{what} {path}: a file, expected a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise error(f"{what} {path}: not readable (permission denied)")
    return path


def output_path(path: str | Path, what: str, *, directory: bool, error: ErrorType = ConfigError) -> Path:
    """A path something will be written to: a file path that is no directory, or a directory path that is no file.

    The nearest existing parent must be a writable directory.
    """
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise error(f"{what} {path}: an existing file, expected a directory to write into")
    if not directory and path.is_dir():
        raise error(f"{what} {path}: an existing directory, expected a file path")
    parent = next((folder for folder in (path, *path.parents) if folder.exists()), Path("."))
    if parent != path and not parent.is_dir():
        raise error(f"{what} {path}: {parent} is a file, so nothing can be written under it")
    if not os.access(parent, os.W_OK | (os.X_OK if parent.is_dir() else 0)):  # a file to replace needs no X bit
        raise error(f"{what} {path}: {parent} is not writable (permission denied)")
    return path


def read_yaml(path: str | Path, what: str, *, error: ErrorType = ConfigError) -> Any:
    """The parsed content of a YAML file, which must exist, be UTF-8 text, parse, and not be empty.

    ``what`` names the file's role (``study file``, ``graft spec``); every message reads ``<what> <path>: ...``.
    """
    import yaml

    path = existing_file(path, what, error=error)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as decode_error:
        raise error(f"{what} {path}: not UTF-8 text (byte {decode_error.start}); expected a YAML file") from None
    except OSError as read_error:
        raise error(f"{what} {path}: cannot read it ({read_error.strerror})") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as yaml_error:
        mark = getattr(yaml_error, "problem_mark", None)
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(yaml_error, "problem", None) or yaml_error).split())
        raise error(f"{what} {path}: not valid YAML ({problem}{place})") from None
    if content is None:
        raise error(f"{what} {path}: holds no YAML content (empty, or only comments)")
    return content


def _did_you_mean(value: object, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _integer_words(minimum: int | None) -> str:
    if minimum is None:
        return "an integer"
    return "a positive integer" if minimum == 1 else f"an integer >= {minimum}"


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite int or float (not a bool, not a string); else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
