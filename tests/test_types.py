"""The shipped code type-checks: mypy with check_untyped_defs and warn_unused_ignores, as
configured in pyproject.toml ([tool.mypy] names the files: the domain, the layers, the roots)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
MYPY = Path(sys.executable).parent / "mypy"


def test_mypy_finds_no_error() -> None:
    result = subprocess.run([str(MYPY)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
