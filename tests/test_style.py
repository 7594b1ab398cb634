"""The code stays lint-clean and formatted (ruff, configured in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_check_passes() -> None:
    result = subprocess.run([str(RUFF), "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ruff_format_is_applied() -> None:
    result = subprocess.run(
        [str(RUFF), "format", "--check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
