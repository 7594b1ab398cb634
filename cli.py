"""The `relance` command: the composition root that starts the parts (dev, worker, api,
simulator), upgrades the ledger's schema, creates apps and runs the demo."""

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from relance.migrate import LedgerNotCurrent
from relance.settings import Settings, get_settings
from relance.states import TERMINAL_STATES

main = typer.Typer(
    help="relance: pushes that resend themselves to whoever did not act.",
    no_args_is_help=True,
    add_completion=False,
)
app_cli = typer.Typer(help="Apps: the appKey:masterSecret pairs that call the API.")
main.add_typer(app_cli, name="app")
db_cli = typer.Typer(help="The ledger's schema: upgrade it, see where it stands, write revisions.")
main.add_typer(db_cli, name="db")
secrets_cli = typer.Typer(
    help="Secrets at rest: provider credentials and callback secrets, encrypted with the keys "
    "of RELANCE_SECRET_KEYS (newest first)."
)
main.add_typer(secrets_cli, name="secrets")
push_cli = typer.Typer(
    help="Pushes through the API: send one and follow its journey, its status, its report."
)
main.add_typer(push_cli, name="push")

STATE_DIR = Path(".relance")
DEV_APP_FILE = STATE_DIR / "dev-app.json"
DEV_KEYS_FILE = STATE_DIR / "secret-keys"


# `relance dev --verbose` sets it for every part it starts; `relance api/worker --verbose` too.
VERBOSE_ENV = "RELANCE_VERBOSE"
# Loggers that speak once per HTTP request, event batch or task: quiet unless --verbose.
CHATTY = ("httpx", "httpcore", "aiohttp.access", "uvicorn.access", "temporalio.activity")


def _verbose(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def _log(verbose: bool = False) -> None:
    """Quiet by default: one line per push and per stage (relance.journey), warnings and errors.
    Verbose: every request, event batch and task, and the workflow context of each line."""
    from temporalio import workflow

    verbose = _verbose(verbose)
    if verbose:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
        logging.getLogger("relance").setLevel(logging.DEBUG)
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
        )
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
        # The journey's own lines (push accepted, stage sent, journey ended) without the
        # workflow's context appended to each.
        workflow.logger.workflow_info_on_message = False
    # Alembic's INFO lines ("Will assume non-transactional DDL") mislead: relance.migrate runs in
    # its own transaction, and `relance db upgrade` says what it did.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _refuse(command: str, exc: Exception) -> typer.Exit:
    """A command that will not run on this ledger says why and what to run, and exits 1."""
    typer.echo(f"relance {command}: {exc}", err=True)
    return typer.Exit(1)


def _ledger_name(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app_cli.command("create")
def app_create(name: Annotated[str, typer.Option(help="A name for humans.")] = "") -> None:
    """Create an app; print its appKey, masterSecret and the secret that signs its status
    callbacks (shown only here)."""
    from relance import ledger
    from relance.db import make_engine
    from relance.migrate import ensure_current

    engine = make_engine(get_settings().database_url)
    try:
        ensure_current(engine)
    except LedgerNotCurrent as exc:
        raise _refuse("app create", exc) from None
    key, secret = ledger.create_app(engine, name)
    callback_secret = ledger.get_app(engine, key).callback_secret
    typer.echo(
        json.dumps({"app_key": key, "master_secret": secret, "callback_secret": callback_secret})
    )


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Bring the ledger (RELANCE_DATABASE_URL) to this build's newest schema revision. An empty
    database gets every table; a ledger made before migrations is stamped as the baseline, then
    upgraded, keeping every row. Safe to run again, and from several places at once."""
    from relance import migrate
    from relance.sealing import BadKeys, SecretsLocked

    url = get_settings().database_url
    try:
        done = migrate.upgrade(url)
    except (LedgerNotCurrent, SecretsLocked, BadKeys) as exc:
        raise _refuse("db upgrade", exc) from None
    typer.echo(f"ledger {_ledger_name(url)}: {done.describe()}")
    _say_clear_secrets(url)


def _say_clear_secrets(url: str) -> None:
    """A ledger with secrets in clear is named as such, with what to do (stderr, exit 0)."""
    from relance import sealing
    from relance.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = sealing.census(conn)
    finally:
        engine.dispose()
    if found.clear:
        todo = (
            "run `relance secrets rotate`"
            if sealing.current() is not None
            else f"set {sealing.SETTING} and run `relance secrets rotate`"
        )
        typer.echo(f"{found.clear} secret(s) are stored in clear: {todo}", err=True)


@secrets_cli.command("new-key")
def secrets_new_key() -> None:
    """Print a new key: put it first in RELANCE_SECRET_KEYS, then run `relance secrets rotate`."""
    from relance.sealing import new_key

    typer.echo(new_key())


@secrets_cli.command("rotate")
def secrets_rotate() -> None:
    """Encrypt every secret of the ledger again under the newest key of RELANCE_SECRET_KEYS
    (secrets in clear included), in one transaction. Afterwards the older keys can be removed
    from RELANCE_SECRET_KEYS. Safe to run again."""
    from relance import sealing
    from relance.db import make_engine
    from relance.migrate import ensure_current

    settings = get_settings()
    try:
        keyring = sealing.install(settings.secret_keys.get_secret_value())
    except sealing.BadKeys as exc:
        raise _refuse("secrets rotate", exc) from None
    if keyring is None:
        typer.echo(
            f"relance secrets rotate: {sealing.SETTING} is not set: set it to the new key "
            "first, then the older ones, comma-separated (`relance secrets new-key` prints one)",
            err=True,
        )
        raise typer.Exit(1)
    engine = make_engine(settings.database_url)
    try:
        ensure_current(engine)
        with engine.begin() as conn:
            before = sealing.seal_all(conn, keyring)
    except (LedgerNotCurrent, sealing.SecretsLocked) as exc:
        raise _refuse("secrets rotate", exc) from None
    finally:
        engine.dispose()
    typer.echo(
        f"ledger {_ledger_name(settings.database_url)}: {before.sealed + before.clear} "
        f"secret(s) encrypted under the newest key ({before.clear} were in clear); "
        + (
            f"the {keyring.size - 1} older key(s) can now be removed from {sealing.SETTING}"
            if keyring.size > 1
            else "nothing depends on any other key"
        )
    )


@secrets_cli.command("status")
def secrets_status() -> None:
    """How many secrets the ledger holds encrypted and in clear, and whether the keys of
    RELANCE_SECRET_KEYS open them all. Exits 1 when the API and worker would refuse to start."""
    from relance import sealing
    from relance.db import make_engine

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        keyring = sealing.install(settings.secret_keys.get_secret_value())
        with engine.connect() as conn:
            found = sealing.check_keys(conn, keyring)
    except (sealing.SecretsLocked, sealing.BadKeys) as exc:
        raise _refuse("secrets status", exc) from None
    finally:
        engine.dispose()
    typer.echo(f"{found.sealed} secret(s) encrypted, {found.clear} in clear")


@main.command("db-init")
def db_init() -> None:
    """The same as `relance db upgrade` (its name before schema migrations)."""
    db_upgrade()


@db_cli.command("status")
def db_status() -> None:
    """Where the ledger stands: its revision, the newest, what an upgrade would apply. Exits 1
    when the API and the worker would refuse to start on it."""
    from relance import migrate
    from relance.db import make_engine

    url = get_settings().database_url
    engine = make_engine(url)
    try:
        state = migrate.status(engine)
    finally:
        engine.dispose()
    at = state.current or "no revision"
    typer.echo(f"ledger {_ledger_name(url)}: at {at}, newest {state.head}")
    if (problem := state.problem()) is not None:
        typer.echo(problem, err=True)
        raise typer.Exit(1)


@db_cli.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the change is for.")],
    empty: Annotated[bool, typer.Option(help="A blank revision, e.g. to migrate data.")] = False,
) -> None:
    """For developers, in a source checkout: write the revision that brings the newest one to
    the SQLModel tables of relance/db.py, into relance/migrations/versions/. Review it, then
    commit it with the model change."""
    from relance import migrate

    written = migrate.revision(message, empty=empty)
    if not written:
        typer.echo("the models and the revisions agree: no revision written (--empty for one)")
        return
    # Autogenerate's output is not the project's style; ruff (a dev dependency) fixes that.
    ruff = Path(sys.executable).parent / "ruff"
    if ruff.exists():
        files = [str(p) for p in written]
        subprocess.run([str(ruff), "check", "--fix", "--quiet", *files], check=False)
        subprocess.run([str(ruff), "format", "--quiet", *files], check=False)
    for path in written:
        typer.echo(f"wrote {path}")


@main.command()
def worker(
    verbose: Annotated[
        bool, typer.Option(help="Every request, event and task in the log.")
    ] = False,
) -> None:
    """Run the Temporal worker (TEMPORAL_ADDRESS, RELANCE_DATABASE_URL)."""
    import worker as worker_module
    from relance.sealing import BadKeys, SecretsLocked
    from relance.temporal_client import TemporalSettingsError

    _log(verbose)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(worker_module.main())
    except (LedgerNotCurrent, SecretsLocked, BadKeys, TemporalSettingsError) as exc:
        raise _refuse("worker: not starting", exc) from None


@main.command()
def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    verbose: Annotated[
        bool, typer.Option(help="Every request, event and task in the log.")
    ] = False,
) -> None:
    """Run the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from api.main import create_app
    from relance.sealing import BadKeys, SecretsLocked
    from relance.temporal_client import TemporalSettingsError

    verbose = _verbose(verbose)
    _log(verbose)
    try:
        app = create_app()
    except (LedgerNotCurrent, SecretsLocked, BadKeys, TemporalSettingsError) as exc:
        raise _refuse("api: not starting", exc) from None
    # The access log (one line per request) only when asked for.
    uvicorn.run(
        app, host=host, port=port, log_level="info" if verbose else "warning", access_log=verbose
    )


@main.command()
def simulator(
    host: str = "127.0.0.1",
    port: int = 8100,
    seed: int = 42,
    p_fail: float = 0.02,
    p_display: float = 0.85,
    p_click: Annotated[str, typer.Option(help="Per stage, comma-separated.")] = "0.3,0.25,0.2",
    min_delay_ms: int = 50,
    max_delay_ms: int = 800,
    send_latency_ms: int = 0,
    baseline: Annotated[
        float,
        typer.Option(
            envvar="RELANCE_SIMULATOR_BASELINE",
            help="Chance that a device clicks on its own after stage 0, whatever it is sent "
            "(`relance dev` plays 0.1).",
        ),
    ] = 0.0,
    baseline_half_life: Annotated[
        float,
        typer.Option(
            envvar="RELANCE_SIMULATOR_BASELINE_HALF_LIFE",
            help="Seconds: the own click's chance halves every this long (decay).",
        ),
    ] = 30.0,
    effect: Annotated[
        list[str] | None,
        typer.Option(
            envvar="RELANCE_SIMULATOR_EFFECTS",
            help='The click chance a received stage causes: "1=0.05" (stage 1), "1:B=0.08" '
            "(stage 1, variant B); repeatable. Default: p_display x p_click of the stage.",
        ),
    ] = None,
) -> None:
    """Run the device simulator; it reports events with RELANCE_SIMULATOR_APP_KEY/_MASTER_SECRET
    (or the dev app's credentials). It knows the truth of the funnel: devices' own clicks
    (baseline, decaying) and what each stage and variant causes (GET /v1/truth)."""
    import uvicorn

    from relance.simulator import Behaviour, create_simulator_app, http_reporter

    _log()
    key, secret = _simulator_credentials()
    behaviour = Behaviour(
        seed=seed,
        p_fail=p_fail,
        p_display=p_display,
        p_click=[float(x) for x in p_click.split(",") if x.strip()],
        min_delay_ms=min_delay_ms,
        max_delay_ms=max_delay_ms,
        send_latency_ms=send_latency_ms,
        baseline=baseline,
        baseline_half_life_s=baseline_half_life,
        effects=_effects(effect or []),
    )
    sim = create_simulator_app(behaviour, http_reporter(get_settings().api_url, key, secret))
    uvicorn.run(sim, host=host, port=port, log_level="warning")


def _effects(specs: list[str]) -> dict[str, float]:
    """ "1=0.05" or "1:B=0.08" (several also comma- or space-separated, as from an env var)."""
    out: dict[str, float] = {}
    for spec in (part for s in specs for part in s.replace(",", " ").split()):
        key, sep, value = spec.partition("=")
        stage = key.split(":")[0]
        if not sep or not stage.isdigit():
            raise typer.BadParameter(f"{spec!r}: expected STAGE=P or STAGE:VARIANT=P")
        out[key] = float(value)
        if not 0 <= out[key] <= 1:
            raise typer.BadParameter(f"{spec!r}: a probability is from 0 to 1")
    return out


def _simulator_credentials() -> tuple[str, str]:
    key = os.environ.get("RELANCE_SIMULATOR_APP_KEY")
    secret = os.environ.get("RELANCE_SIMULATOR_MASTER_SECRET")
    if key and secret:
        return key, secret
    return _dev_credentials(get_settings(), create=False)


def _dev_credentials(settings: Settings, create: bool) -> tuple[str, str]:
    """RELANCE_DEV_APP_KEY/RELANCE_DEV_MASTER_SECRET, else the pair kept in .relance/."""
    if settings.dev_app_key and settings.dev_master_secret:
        return settings.dev_app_key, settings.dev_master_secret
    if DEV_APP_FILE.exists():
        saved = json.loads(DEV_APP_FILE.read_text())
        return saved["app_key"], saved["master_secret"]
    if not create:
        raise typer.BadParameter("no app credentials: run `relance dev` first or set RELANCE_DEV_*")
    import secrets

    key, secret = "dev" + secrets.token_hex(8), secrets.token_urlsafe(32)
    STATE_DIR.mkdir(exist_ok=True)
    DEV_APP_FILE.write_text(json.dumps({"app_key": key, "master_secret": secret}))
    DEV_APP_FILE.chmod(0o600)
    return key, secret


def _dev_secret_keys(settings: Settings) -> str:
    """RELANCE_SECRET_KEYS, else the key kept in .relance/secret-keys (made on first start,
    readable by its owner only): a laptop's ledger is encrypted at rest like a deployment's."""
    given = settings.secret_keys.get_secret_value().strip()
    if given:
        return given
    if DEV_KEYS_FILE.exists():
        return DEV_KEYS_FILE.read_text().strip()
    from relance.sealing import new_key

    STATE_DIR.mkdir(exist_ok=True)
    # Created with mode 0600, so the key is never readable by others, not even for a moment.
    fd = os.open(DEV_KEYS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key() + "\n")
    return DEV_KEYS_FILE.read_text().strip()


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def temporal_dev_command(
    db_file: Path, port: int = 7233, ui_port: int = 8233, pragmas: tuple[str, ...] | None = None
) -> list[str]:
    """The dev server as `relance dev` runs it; `pragmas` None: DEV_SERVER_SQLITE_PRAGMAS."""
    from relance.binaries import DEV_SERVER_SQLITE_PRAGMAS, SEARCH_ATTRIBUTES, temporal_cli

    cmd = [
        temporal_cli(),
        "server",
        "start-dev",
        "--db-filename",
        str(db_file),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--log-level",
        "error",
    ]
    for name in SEARCH_ATTRIBUTES:
        cmd += ["--search-attribute", f"{name}=Keyword"]
    for pragma in DEV_SERVER_SQLITE_PRAGMAS if pragmas is None else pragmas:
        cmd += ["--sqlite-pragma", pragma]
    return cmd


@main.command()
def dev(
    simulate: Annotated[bool, typer.Option(help="Also run the device simulator.")] = True,
    api_port: int = 8000,
    temporal_port: int = 7233,
    ui_port: int = 8233,
    simulator_port: int = 8100,
    worker_metrics_port: Annotated[int, typer.Option(help="Worker /metrics; 0: none.")] = 9464,
    verbose: Annotated[
        bool,
        typer.Option(
            help="Every HTTP request, event and task; default: one line per push and stage."
        ),
    ] = False,
) -> None:
    """Start everything on this machine: Temporal dev server (SQLite file, UI on :8233), the
    worker, the API on :8000 and the simulator on :8100. Ctrl-C stops it all."""
    from relance import ledger, migrate, sealing
    from relance.db import make_engine

    # Ctrl-C stops everything even when this was started with SIGINT ignored (as a background
    # job of a non-interactive shell is), and SIGTERM stops it the same way; the parts are
    # then started with the default dispositions, so they stop on the signals we forward.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings = get_settings()
    STATE_DIR.mkdir(exist_ok=True)
    key, secret = _dev_credentials(settings, create=True)
    secret_keys = _dev_secret_keys(settings)
    sealing.install(secret_keys)
    engine = make_engine(settings.database_url)
    # On a laptop the ledger follows the code: what `relance db upgrade` does in a deployment.
    typer.echo(f"ledger: {migrate.upgrade(engine).describe()}")
    with engine.begin() as conn:  # a laptop's ledger made without a key: sealed now
        sealing.seal_all(conn, sealing.current())
    ledger.create_app(engine, "dev", key, secret)
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "RELANCE_API_URL": f"http://127.0.0.1:{api_port}",
        "RELANCE_SIMULATOR_URL": f"http://127.0.0.1:{simulator_port}",
        "RELANCE_TEMPORAL_UI_URL": f"http://localhost:{ui_port}",
        # On a laptop, the business server receiving callbacks is usually on localhost too.
        "RELANCE_CALLBACK_ALLOWED_NETWORKS": os.environ.get(
            "RELANCE_CALLBACK_ALLOWED_NETWORKS", '["127.0.0.0/8", "::1/128"]'
        ),
        # The dev simulator's devices also click on their own (the demo's holdouts then see
        # clicks too); a bare `relance simulator`'s do not.
        "RELANCE_SIMULATOR_BASELINE": os.environ.get("RELANCE_SIMULATOR_BASELINE", "0.1"),
        "RELANCE_SIMULATOR_APP_KEY": key,
        "RELANCE_SIMULATOR_MASTER_SECRET": secret,
        "RELANCE_SECRET_KEYS": secret_keys,
        # Prometheus metrics on loopback: the API's at /metrics, the worker's on its own port.
        "RELANCE_WORKER_METRICS_PORT": str(worker_metrics_port),
        "RELANCE_WORKER_METRICS_HOST": "127.0.0.1",
        VERBOSE_ENV: "1" if _verbose(verbose) else "",
    }
    me = [sys.executable, "-m", "cli"]
    procs: list[subprocess.Popen[Any]] = []
    temporal = temporal_dev_command(STATE_DIR / "temporal.db", temporal_port, ui_port)
    temporal_stopping = threading.Event()
    try:
        procs.append(
            subprocess.Popen(
                temporal, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
        _relay(procs[0], STATE_DIR / "temporal.log", temporal_stopping)
        wait_port(temporal_port)
        procs.append(subprocess.Popen([*me, "worker"], env=env))
        procs.append(subprocess.Popen([*me, "api", "--port", str(api_port)], env=env))
        if simulate:
            procs.append(
                subprocess.Popen([*me, "simulator", "--port", str(simulator_port)], env=env)
            )
            wait_port(simulator_port)
        wait_port(api_port)
        typer.echo(
            "\nrelance is up\n"
            f"  API + docs    http://127.0.0.1:{api_port}/docs\n"
            f"  metrics       http://127.0.0.1:{api_port}/metrics"
            + (f", :{worker_metrics_port}/metrics (worker)" if worker_metrics_port else "")
            + "\n"
            f'  Temporal UI   http://127.0.0.1:{ui_port}  (filter: RelanceMsgId="<msg_id>")\n'
            + f"  Temporal log  {STATE_DIR / 'temporal.log'}\n"
            + (f"  simulator     http://127.0.0.1:{simulator_port}\n" if simulate else "")
            + f"  app key       {key}\n  master secret {secret}\n"
            "Try `make demo` (relance demo) in another terminal. Ctrl-C stops everything.\n"
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = [p.args for p in procs if p.poll() is not None]
        typer.echo(f"a part stopped: {failed}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("stopping…")
    finally:
        _stop(procs, temporal_stopping)


def _relay(proc: subprocess.Popen[str], log: Path, stopping: threading.Event) -> None:
    """Copy the Temporal dev server's output to `log`, and to this terminal until it is asked
    to stop. Its own shutdown can log a gRPC race as an ERROR ("unable to add metrics baggage
    to gRPC trailer"), which says nothing about relance or the journeys, which Temporal keeps:
    from then on its lines go to the file only, and the stop line says where they are."""

    def pump() -> None:
        assert proc.stdout is not None
        with log.open("a") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if not stopping.is_set():
                    sys.stderr.write(line)
                    sys.stderr.flush()

    threading.Thread(target=pump, name="temporal-log", daemon=True).start()


def _stop(procs: list[subprocess.Popen[Any]], temporal_stopping: threading.Event) -> None:
    """Stop in waves, within 10 s: the API and the worker first (the worker hands back its
    activities while Temporal still answers, so it logs no "connection refused"), then the
    simulator, then Temporal. A part still running at its wave's end is killed."""
    temporal, rest = procs[:1], procs[1:]
    simulator = [p for p in rest if "simulator" in str(p.args)]
    parts = [p for p in rest if p not in simulator]

    def name(p: subprocess.Popen[Any]) -> str:
        args = [str(a) for a in p.args] if isinstance(p.args, list | tuple) else [str(p.args)]
        if p in temporal:
            return "temporal"
        return next((a for a in ("api", "worker", "simulator") if a in args), "process")

    for wave, timeout in ((parts, 6.0), (simulator, 1.5), (temporal, 2.0)):
        if wave is temporal:
            temporal_stopping.set()
        for p in wave:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        killed = []
        for p in wave:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                killed.append(name(p))
        if wave:
            done = ", ".join(sorted(name(p) for p in wave))
            typer.echo(f"relance dev: stopped {done}" + (f" (killed {killed})" if killed else ""))


@main.command()
def demo(
    devices: Annotated[int, typer.Option(min=1, max=1000)] = 200,
    holdout: Annotated[float, typer.Option(min=0, max=0.9)] = 0.2,
) -> None:
    """The morning-news case on simulated devices, windows shortened to seconds, with a random
    holdout at each resend stage: prints the funnel per stage, the simulator's true effect of
    each resend, the report, and the journey's Temporal UI link. Needs `relance dev` running."""
    settings = get_settings()
    key, secret = _dev_credentials(settings, create=False)
    with httpx.Client(base_url=settings.api_url, auth=(key, secret), timeout=30) as client:
        ids = [f"sim-news-{i:04d}" for i in range(devices)]
        interests = ["Sports", "Tech", "Politics", "Culture"]
        client.post(
            "/v4/devices",
            json={
                "devices": [
                    {
                        "registration_id": rid,
                        "platform": "android",
                        "attributes": {"interests": [interests[i % 4]]} if i % 5 else {},
                    }
                    for i, rid in enumerate(ids)
                ]
            },
        ).raise_for_status()
        body = {
            "from": "push",
            "to": {"registration_id": ids},
            "body": {
                "platform": "android",
                "notification": {
                    "android": {"title": "Morning briefing", "alert": "Today's top stories are in"}
                },
            },
            "resend": {
                "holdout": holdout,
                "trigger": {"condition": "not_clicked", "within": "20s"},
                "stages": [
                    {"after": "10s", "notification": {"title": "You missed this morning's news"}},
                    {
                        "after": "30s",
                        "notification": {
                            "template": "{{ interests[0] }} news is waiting for you",
                            "append": "Tap to catch up in 2 minutes",
                        },
                    },
                ],
            },
        }
        accepted = client.post("/v4/push", json=body)
        if accepted.status_code != 200:
            typer.echo(accepted.text, err=True)
            raise typer.Exit(1)
        msg_id = accepted.json()["msg_id"]
        typer.echo(f"msg_id {msg_id}; schedule: {', '.join(accepted.json()['schedule'])}")
        last = None
        while True:
            status = client.get(f"/v4/push/{msg_id}").json()
            if status["state"] != last:
                typer.echo(f"  {time.strftime('%H:%M:%S')} {status['state']}")
                last = status["state"]
            if status["state"] in TERMINAL_STATES:
                break
            time.sleep(1)
        time.sleep(2)  # the last device reports
        final = client.get(f"/v4/push/{msg_id}").json()
        funnel = final["funnel"]
        report = client.get(f"/v4/push/{msg_id}/report")
    typer.echo("\nstage  sent  held_out  delivered  displayed  clicked")
    for s in funnel["stages"]:
        row = (s["stage"], s["sent"], s["held_out"], s["delivered"], s["displayed"], s["clicked"])
        typer.echo("{:>5} {:>5} {:>9} {:>10} {:>10} {:>8}".format(*row))
    _print_truth(settings.simulator_url, accepted.json()["schedule"], 20.0)
    # The report: each resend's lift over its holdout, with its 95% interval, beside the truth.
    if report.status_code == 200:
        from relance import console

        typer.echo("\nreport (GET /v4/push/{msg_id}/report):")
        console.terminal().print(console.report_table(report.json()))
    else:
        typer.echo(f"\nreport: GET /v4/push/{msg_id}/report answered {report.status_code}")
    typer.echo(
        f"clicked: {funnel['clicked']} of {funnel['recipients']}, "
        f"{funnel['clicked_after_resend']} of them after a resend"
    )
    typer.echo(f"journey: {final['temporal_ui']}")


# `relance push ...`: the API's client, credentials from options or the environment, else the
# dev app's (what `relance dev` made).
ApiUrl = Annotated[str | None, typer.Option(envvar="RELANCE_API_URL", help="The relance API.")]
AppKey = Annotated[str | None, typer.Option(envvar="RELANCE_APP_KEY", help="appKey.")]
MasterSecret = Annotated[
    str | None, typer.Option(envvar="RELANCE_MASTER_SECRET", help="masterSecret.")
]


def _api_client(api_url: str | None, key: str | None, secret: str | None) -> httpx.Client:
    settings = get_settings()
    if not (key and secret):
        key, secret = _dev_credentials(settings, create=False)
    return httpx.Client(base_url=api_url or settings.api_url, auth=(key, secret), timeout=30)


def _fail(response: httpx.Response, what: str) -> typer.Exit:
    typer.echo(f"{what}: HTTP {response.status_code} {response.text}", err=True)
    return typer.Exit(1)


@push_cli.command("send")
def push_send(
    body: Annotated[Path, typer.Argument(help="The POST /v4/push body, a JSON file.")],
    follow: Annotated[
        bool, typer.Option(help="Show each stage's progress until the journey ends.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between two looks.")] = 1.0,
    api_url: ApiUrl = None,
    app_key: AppKey = None,
    master_secret: MasterSecret = None,
) -> None:
    """Send a push; with --follow, progress bars per stage (sent of targeted, delivered,
    clicked) until the journey ends: exit 0 when it completed, 1 when it failed or was
    cancelled."""
    from relance import console

    with _api_client(api_url, app_key, master_secret) as client:
        accepted = client.post("/v4/push", json=json.loads(body.read_text()))
        if accepted.status_code != 200:
            raise _fail(accepted, "push refused")
        out = console.terminal()
        msg_id = accepted.json()["msg_id"]
        out.print(console.accepted(accepted.json()))
        if not follow:
            return
        status = console.follow(out, lambda: _get(client, f"/v4/push/{msg_id}", "status"), interval)
        out.print(console.status_table(status))
    if status["state"] != "completed":
        raise typer.Exit(1)


def _get(client: httpx.Client, path: str, what: str) -> dict[str, Any]:
    response = client.get(path)
    if response.status_code != 200:
        raise _fail(response, what)
    result: dict[str, Any] = response.json()
    return result


@push_cli.command("status")
def push_status(
    msg_id: str, api_url: ApiUrl = None, app_key: AppKey = None, master_secret: MasterSecret = None
) -> None:
    """A push's state, next stage and funnel per stage, as a table."""
    from relance import console

    with _api_client(api_url, app_key, master_secret) as client:
        status = _get(client, f"/v4/push/{msg_id}", "status")
    console.terminal().print(console.status_table(status))


@push_cli.command("report")
def push_report(
    msg_id: str, api_url: ApiUrl = None, app_key: AppKey = None, master_secret: MasterSecret = None
) -> None:
    """Rates per stage and variant, and the lift of each resend over its holdout
    (GET /v4/push/{msg_id}/report); on a server without reports, the funnel."""
    from relance import console

    out = console.terminal()
    with _api_client(api_url, app_key, master_secret) as client:
        response = client.get(f"/v4/push/{msg_id}/report")
        if response.status_code == 200:
            out.print(console.report_table(response.json()))
            return
        if response.status_code != 404 or "no route" not in response.text:
            raise _fail(response, "report")  # e.g. a push this app does not have
        # The route itself is missing: a server from before reports.
        status = _get(client, f"/v4/push/{msg_id}", "status")
    out.print(
        "[yellow]This server has no report route (GET /v4/push/{id}/report answered 404): "
        "showing the funnel instead.[/yellow]"
    )
    out.print(console.status_table(status))


def _print_truth(simulator_url: str, schedule: list[str], observe_s: float) -> None:
    """What the simulator truly causes at each resend stage, among those still eligible, in
    the stage's window (to the next stage, or the end of the observation window)."""
    from datetime import datetime

    from relance.simulator import Behaviour, true_click_lift

    try:
        behaviour = Behaviour.model_validate(httpx.get(f"{simulator_url}/v1/truth").json())
    except (httpx.HTTPError, ValueError) as exc:
        typer.echo(f"\ntruth: the simulator at {simulator_url} did not say ({exc})")
        return
    times = [datetime.fromisoformat(t) for t in schedule]
    offsets = [(t - times[0]).total_seconds() for t in times]
    typer.echo(
        f"\ntruth (the simulator's): devices click on their own with chance "
        f"{behaviour.baseline:g}, halving every {behaviour.baseline_half_life_s:g}s"
    )
    for stage in range(1, len(offsets)):
        end = offsets[stage + 1] if stage + 1 < len(offsets) else offsets[stage] + observe_s
        lift = true_click_lift(behaviour, stage, None, offsets[stage], end)
        typer.echo(
            f"  stage {stage} truly adds {lift * 100:+.1f} points of clicks "
            f"(vs its holdout, clicks to {end - offsets[stage]:g}s after it)"
        )


if __name__ == "__main__":
    main()
