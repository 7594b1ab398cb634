"""Secrets at rest: what an app stores through the API (provider private keys, EngageLab's
master and callback secrets, its callback signing secret) and its own master secret are not
in the ledger's bytes in clear, on SQLite (the database files) or PostgreSQL (pg_dump);
`relance secrets rotate` re-encrypts them so the old key can go; the API and the worker refuse
to start with keys that cannot open them, and `relance dev` keeps its key owner-only."""

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import make_url
from sqlalchemy.engine import Engine

import cli
from api.main import create_app
from relance import ledger, sealing
from relance.settings import Settings
from tests.pgserver import _bin_dir
from tests.providers.fakes import apns_fake, fcm_fake
from tests.relance.test_migrations import blank  # noqa: F401 -- the fixture
from tests.stack import free_port, serve

ROOT = Path(__file__).resolve().parents[2]
CALLBACK_SECRET = "callback-signing-secret-0123456789"
ENGAGELAB_MASTER = "engagelab-master-secret-9876543210"
ENGAGELAB_CALLBACK = "engagelab-callback-secret-5555555555"


def pem_body(pem: str) -> list[str]:
    """The base64 lines of a PEM key: any one of them found in clear is a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def vapid_key() -> str:
    raw = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    return base64.urlsafe_b64encode(raw.to_bytes(32, "big")).rstrip(b"=").decode()


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def raw_bytes(engine: Engine, tmp_path: Path) -> bytes:
    """Everything the database holds, as an attacker with the files or a dump would see it."""
    if engine.dialect.name == "sqlite":
        engine.dispose()  # nothing held in this process's memory only
        database = Path(str(engine.url.database))
        return b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    bin_dir = _bin_dir()
    assert bin_dir is not None
    url = make_url(url_of(engine)).set(drivername="postgresql")
    dump = subprocess.run(
        [
            str(bin_dir / "pg_dump"),
            "--data-only",
            "--dbname",
            url.render_as_string(hide_password=False),
        ],
        capture_output=True,
        check=True,
    )
    return dump.stdout


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[Engine]:
    """A ledger at the newest revision, on SQLite: for what does not depend on the database."""
    from relance import migrate
    from relance.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def keys() -> Iterator[tuple[str, str]]:
    """A key of its own for the test (newest, older), installed as the process's keys."""
    newest, older = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with sealing.using([older]):
        yield newest, older


async def test_the_ledger_holds_no_secret_in_clear(
    blank: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Secrets set through the API over HTTP are in no byte of the database in clear, and
    are read back whole (the provider can sign with them)."""
    from relance import migrate

    migrate.upgrade(blank)
    key, master_secret = ledger.create_app(blank, "shop")
    fcm_account, _ = fcm_fake.new_service_account("shop-123")
    p8, _ = apns_fake.new_p8_key()
    vapid = vapid_key()
    settings = Settings(
        database_url=url_of(blank),
        temporal_address="127.0.0.1:1",
        callback_allowed_networks=["127.0.0.0/8"],
    )
    port, app = free_port(), create_app(settings)
    async with (
        serve(app, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", auth=(key, master_secret)) as api,
    ):
        puts = {
            "fcm": {"platforms": ["android"], "credentials": fcm_account},
            "apns": {
                "platforms": ["ios"],
                "credentials": {
                    "team_id": "TEAM123456",
                    "key_id": "KEY1234567",
                    "private_key": p8,
                    "topic": "shop.example.app",
                },
            },
            "webpush": {
                "platforms": ["web"],
                "credentials": {"private_key": vapid, "subject": "mailto:ops@shop.example"},
            },
        }
        for provider, body in puts.items():
            answer = await api.put(f"/v4/app/providers/{provider}", json=body)
            assert answer.status_code == 200, answer.text
        answer = await api.put(
            "/v4/app/callback",
            json={
                "urls": ["http://127.0.0.1:9/cb"],
                "username": "shop",
                "secret": CALLBACK_SECRET,
            },
        )
        assert answer.status_code == 200, answer.text
    app.state.context.engine.dispose()
    # EngageLab as the relay: its master secret and its callback signing secret.
    ledger.set_provider(
        blank,
        key,
        "engagelab",
        ["harmony"],
        {
            "app_key": "el-app",
            "master_secret": ENGAGELAB_MASTER,
            "callback_username": "el",
            "callback_secret": ENGAGELAB_CALLBACK,
        },
    )

    stored = raw_bytes(blank, tmp_path)

    assert key.encode() in stored  # the dump is the ledger's: its app is there
    clear = [
        master_secret,
        CALLBACK_SECRET,
        ENGAGELAB_MASTER,
        ENGAGELAB_CALLBACK,
        vapid,
        *pem_body(fcm_account["private_key"]),
        *pem_body(p8),
    ]
    found = [secret[:12] + "…" for secret in clear if secret.encode() in stored]
    assert found == [], f"in clear in the ledger: {found}"
    configs = {c.provider: c.credentials for c in ledger.provider_configs(blank, key)}
    assert configs["fcm"]["private_key"] == fcm_account["private_key"]
    assert configs["apns"]["private_key"] == p8
    assert configs["engagelab"]["master_secret"] == ENGAGELAB_MASTER
    assert ledger.get_app(blank, key).callback_secret == CALLBACK_SECRET


def test_rotate_re_encrypts_so_the_old_key_can_be_dropped(
    blank: Engine,  # noqa: F811
    keys: tuple[str, str],
) -> None:
    from relance import migrate

    newest, older = keys
    migrate.upgrade(blank)
    key, _ = ledger.create_app(blank, "shop")  # sealed under `older`, the installed key
    ledger.set_callbacks(blank, key, [], "shop", CALLBACK_SECRET)
    ledger.set_provider(blank, key, "fcm", ["android"], {"private_key": "k" * 40})
    env = {"RELANCE_DATABASE_URL": url_of(blank)}

    only_new = run_cli("secrets", "status", env={**env, "RELANCE_SECRET_KEYS": newest})
    assert only_new.returncode == 1 and "not in RELANCE_SECRET_KEYS" in only_new.stderr
    assert f"app {key!r}" in only_new.stderr  # which secret, never its value

    done = run_cli("secrets", "rotate", env={**env, "RELANCE_SECRET_KEYS": f"{newest},{older}"})
    assert done.returncode == 0, done.stderr
    assert "2 secret(s) encrypted under the newest key" in done.stdout
    assert "1 older key(s) can now be removed" in done.stdout

    status = run_cli("secrets", "status", env={**env, "RELANCE_SECRET_KEYS": newest})
    assert status.returncode == 0, status.stderr
    assert "2 secret(s) encrypted, 0 in clear" in status.stdout
    with sealing.using([newest]):
        assert ledger.get_app(blank, key).callback_secret == CALLBACK_SECRET
        (config,) = ledger.provider_configs(blank, key)
        assert config.credentials == {"private_key": "k" * 40}
    with sealing.using([older]), pytest.raises(sealing.SecretsLocked):
        ledger.get_app(blank, key)


def test_rotate_without_keys_changes_nothing_and_names_the_setting(
    sqlite_ledger: Engine,
) -> None:
    env = {"RELANCE_DATABASE_URL": url_of(sqlite_ledger), "RELANCE_SECRET_KEYS": ""}
    done = run_cli("secrets", "rotate", env=env)
    assert done.returncode == 1 and "RELANCE_SECRET_KEYS is not set" in done.stderr
    bad = run_cli("secrets", "rotate", env={**env, "RELANCE_SECRET_KEYS": "not-a-key"})
    assert bad.returncode == 1 and "key 1 of 1 is not a Fernet key" in bad.stderr
    assert "not-a-key" not in bad.stderr


@pytest.mark.parametrize("part", ["api", "worker"])
def test_the_api_and_worker_refuse_keys_that_cannot_open_the_ledger(
    sqlite_ledger: Engine, keys: tuple[str, str], part: str
) -> None:
    """Refused at start, with the setting and the secret named (never a key or a secret),
    rather than a failure on the first push or callback."""
    newest, older = keys
    key, _ = ledger.create_app(sqlite_ledger, "shop")  # its callback secret sealed by `older`
    env = {
        "RELANCE_DATABASE_URL": url_of(sqlite_ledger),
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
        "RELANCE_WORKER_METRICS_PORT": "0",
    }
    args = [part] if part == "worker" else [part, "--port", str(free_port())]
    # The API without any key; the worker with the wrong one.
    given = "" if part == "api" else newest
    refused = run_cli(*args, env={**env, "RELANCE_SECRET_KEYS": given})
    assert refused.returncode == 1, refused.stderr
    assert f"relance {part}: not starting" in refused.stderr
    if part == "api":
        assert "1 encrypted secret(s) and RELANCE_SECRET_KEYS is not set" in refused.stderr
    else:
        assert f"app {key!r} callback secret was encrypted with a key that is not in " in (
            refused.stderr
        )
    output = refused.stderr + refused.stdout
    assert older not in output and newest not in output


def test_relance_dev_makes_its_key_once_readable_by_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = cli._dev_secret_keys(Settings(secret_keys=""))
    path = tmp_path / ".relance" / "secret-keys"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sealing.Keyring([first]).size == 1
    assert cli._dev_secret_keys(Settings(secret_keys="")) == first  # kept across starts
    given = Fernet.generate_key().decode()
    assert cli._dev_secret_keys(Settings(secret_keys=given)) == given
