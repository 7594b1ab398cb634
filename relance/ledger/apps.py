"""Apps: the appKey:masterSecret pairs that call the API, and where their callbacks go."""

import hashlib
import hmac
import secrets

from sqlalchemy.engine import Engine
from sqlmodel import Session

from relance.db import App, reading
from relance.ledger._base import NotFound
from relance.timing import AppPolicy


def hash_secret(secret: str) -> str:
    # Secrets are 32 random bytes: a plain SHA-256 is enough and keeps auth cheap per request.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_app(
    engine: Engine, name: str = "", app_key: str | None = None, secret: str | None = None
) -> tuple[str, str]:
    """Create (or, for a given key and secret, make sure of) an app; returns (key, secret)."""
    app_key = app_key or secrets.token_hex(12)
    secret = secret or secrets.token_urlsafe(32)
    with Session(engine) as session:
        existing = session.get(App, app_key)
        if existing is None:
            session.add(
                App(
                    app_key=app_key,
                    secret_hash=hash_secret(secret),
                    name=name,
                    callback_secret=secrets.token_urlsafe(32),
                )
            )
        else:
            existing.secret_hash = hash_secret(secret)
        session.commit()
    return app_key, secret


def get_app(engine: Engine, app_key: str) -> App:
    with Session(reading(engine)) as session:
        app = session.get(App, app_key)
    if app is None:
        raise NotFound("app_key", f"no app {app_key!r}")
    return app


def authenticate(engine: Engine, app_key: str, secret: str) -> App | None:
    with Session(reading(engine)) as session:
        app = session.get(App, app_key)
    if app is None or not hmac.compare_digest(app.secret_hash, hash_secret(secret)):
        return None
    return app


def set_callbacks(
    engine: Engine, app_key: str, urls: list[str], username: str | None, secret: str | None
) -> App:
    """The app's default callback URLs, and optionally the username and secret that sign them."""
    with Session(engine) as session:
        app = session.get(App, app_key)
        if app is None:
            raise NotFound("app_key", f"no app {app_key!r}")
        app.callback_urls = list(urls)
        if username is not None:
            app.callback_username = username
        if secret is not None:
            app.callback_secret = secret
        session.commit()
        session.refresh(app)
        return app


def policy_of(app: App) -> AppPolicy:
    """The app's when-and-how-often policy, from its row (defaults where it set none)."""
    return AppPolicy.model_validate(
        {
            "timezone": app.timezone or "UTC",
            "quiet_hours": app.quiet_hours,
            "frequency_caps": app.frequency_caps or [],
            "throttle_per_minute": app.throttle_per_minute,
        }
    )


def set_policy(engine: Engine, app_key: str, policy: AppPolicy) -> AppPolicy:
    """Replace the app's policy (every field: what the PUT leaves out goes back to default)."""
    data = policy.model_dump(mode="json")
    with Session(engine) as session:
        app = session.get(App, app_key)
        if app is None:
            raise NotFound("app_key", f"no app {app_key!r}")
        app.timezone = data["timezone"]
        app.quiet_hours = data["quiet_hours"]
        app.frequency_caps = data["frequency_caps"]
        app.throttle_per_minute = data["throttle_per_minute"]
        session.commit()
        session.refresh(app)
        return policy_of(app)
