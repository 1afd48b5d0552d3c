"""The training commands' help: named after the ``attngraft`` command, with no LightningCLI warning."""

from __future__ import annotations

import pytest
import yaml

from attngraft.cli import main


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["fit", "--help"], "usage: attngraft [options] fit "),
        (["-v", "test", "--help"], "usage: attngraft [options] test "),
        (["lr-find", "--help"], "usage: attngraft lr-find "),
    ],
)
def test_help_names_the_command_and_warns_nothing(argv: list[str], usage: str, capsys, recwarn) -> None:
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(usage)
    assert "--trainer.max_epochs" in captured.out
    assert [str(warning.message) for warning in recwarn if "LightningCLI" in str(warning.message)] == []
    assert "LightningCLI" not in captured.err


def test_lr_find_help_lists_the_sweep_options(capsys) -> None:
    assert main(["lr-find", "--help"]) == 0
    assert "sweep options: --min_lr (default 1e-06), --max_lr (default 1.0), --num_training (default 100)" in " ".join(
        capsys.readouterr().out.split()
    )


@pytest.mark.parametrize("key", ["data.train_augment", "trainer.callbacks"])
def test_a_recipe_naming_os_system_is_refused_without_running_it(key: str, tmp_path, capsys) -> None:
    """LightningCLI (jsonargparse) builds a class_path only when it subclasses the key's type."""
    marker = tmp_path / "ran"
    section, name = key.split(".")
    entry = {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(yaml.safe_dump({section: {name: [entry]}}))
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(recipe), "--trainer.fast_dev_run", "true"])
    assert exited.value.code == 2
    assert key in capsys.readouterr().err
    assert not marker.exists()
