"""The training commands' help: named after the ``attngraft`` command, with no LightningCLI warning."""

from __future__ import annotations

import pytest

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
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(usage)
    assert "--trainer.max_epochs" in captured.out
    assert [str(warning.message) for warning in recwarn if "LightningCLI" in str(warning.message)] == []
    assert "LightningCLI" not in captured.err


def test_lr_find_help_lists_the_sweep_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["lr-find", "--help"])
    assert "sweep options: --min_lr (default 1e-06), --max_lr (default 1.0), --num_training (default 100)" in " ".join(
        capsys.readouterr().out.split()
    )
