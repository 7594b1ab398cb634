"""docker-compose.yml stays valid against the Compose specification (no engine here), and the
check really rejects a broken file."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-compose.sh"), *map(str, files)],
        env={"VENV": str(Path(sys.executable).parent.parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    result = check(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    shutil.copy(ROOT / "docker-compose.yml", broken)
    broken.write_text(broken.read_text().replace("replicas: 2", "replica: 2"))
    result = check(broken)
    assert result.returncode != 0
    assert "replica" in result.stdout + result.stderr


def test_compose_runs_what_the_cli_offers() -> None:
    """Every `relance <command>` the compose file runs exists in the CLI."""
    from typer.testing import CliRunner

    from cli import main

    text = (ROOT / "docker-compose.yml").read_text()
    for command in (["api"], ["worker"], ["simulator"], ["db", "upgrade"]):
        assert ", ".join(f'"{word}"' for word in ["relance", *command]) in text
        assert CliRunner().invoke(main, [*command, "--help"]).exit_code == 0


def test_api_and_workers_wait_for_the_schema_upgrade() -> None:
    """The API and the workers start only once `relance db upgrade` has completed: they refuse
    to run on a ledger that is behind."""
    from ruamel.yaml import YAML  # what check-jsonschema reads the file with

    services = YAML(typ="safe").load(ROOT / "docker-compose.yml")["services"]
    assert services["relance-migrate"]["command"] == ["relance", "db", "upgrade"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["relance-migrate"] == {
            "condition": "service_completed_successfully"
        }
