"""Runs a benchmark script the way a user does and returns its JSON report."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def run_json(script: str, *arguments: str) -> Any:
    """``python benchmarks/<script> --quick --json ARGUMENTS``, parsed."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--json", *arguments],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)
