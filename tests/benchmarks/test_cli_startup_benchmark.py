"""The CLI start-up benchmark runs and reports every field (values are not judged here: no timing in tests)."""

import importlib.util

from .scripts import BENCHMARKS, run_json


def test_quick_run_times_each_command_as_a_process() -> None:
    report = run_json("cli_startup.py", "--commands=--help,blocks --help")
    assert report["repeats"] == 1
    assert [row["command"] for row in report["rows"]] == ["attngraft --help", "attngraft blocks --help"]
    for row in report["rows"]:
        assert 0 < row["min_s"] <= row["median_s"]
        assert row["median_cpu_s"] > 0
        assert row["heavy_imports"] == row["first_heavy_imports"] == []
        assert row["first_s"] > 0
        assert row["first_cpu_s"] > 0


def test_heavy_imports_are_read_from_an_importtime_log() -> None:
    spec = importlib.util.spec_from_file_location("cli_startup", BENCHMARKS / "cli_startup.py")
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    log = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       812 |        812 |     torch._C\n"
        "import time:        40 |         40 |   yaml\n"
        "import time:       900 |       1752 | timm\n"
    )
    assert script.heavy_imports(log) == ["torch", "timm"]
