import pytest

from attngraft.errors import AttngraftError, UnknownNameError
from attngraft.registry import Registry


@pytest.fixture
def colours() -> Registry[int]:
    registry: Registry[int] = Registry("colour")
    registry.add("red", 1)
    registry.add("green", 2)
    registry.add("light-green", 3)
    return registry


def test_get_returns_registered_object(colours: Registry[int]) -> None:
    assert colours.get("green") == 2
    assert "red" in colours
    assert len(colours) == 3


def test_decorator_registers_and_returns_object() -> None:
    registry: Registry[type] = Registry("thing")

    @registry.register("box")
    class Box:
        pass

    assert registry.get("box") is Box


def test_duplicates_rejected(colours: Registry[int]) -> None:
    with pytest.raises(ValueError, match="'red' is already registered"):
        colours.add("red", 4)
    assert colours.get("red") == 1


@pytest.mark.parametrize("bad_name", ["", None, 3])
def test_invalid_names_rejected(colours: Registry[int], bad_name: object) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        colours.add(bad_name, 0)  # type: ignore[arg-type]


def test_unknown_name_suggests_close_matches_and_lists_valid(colours: Registry[int]) -> None:
    with pytest.raises(UnknownNameError) as caught:
        colours.get("gren")
    message = str(caught.value)
    assert "unknown colour 'gren'" in message
    assert "Did you mean 'green'" in message
    assert "Valid colours: green, light-green, red" in message
    assert isinstance(caught.value, AttngraftError)
    assert isinstance(caught.value, ValueError)


def test_unknown_name_without_close_match_has_no_hint(colours: Registry[int]) -> None:
    with pytest.raises(UnknownNameError) as caught:
        colours.get("zzzzzz")
    assert "Did you mean" not in str(caught.value)


def test_unhashable_name_is_unknown(colours: Registry[int]) -> None:
    with pytest.raises(UnknownNameError):
        colours.get(["red"])  # type: ignore[arg-type]


def test_names_sorted_and_filtered_by_pattern(colours: Registry[int]) -> None:
    assert colours.names() == ["green", "light-green", "red"]
    assert colours.names("*green") == ["green", "light-green"]
    assert colours.names("blue*") == []
    assert list(colours) == colours.names()
