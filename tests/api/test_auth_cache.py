"""The API's authentication cache: successes only, for RELANCE_AUTH_CACHE_SECONDS, keyed by the
secret's hash. A wrong secret is never let in, a rotated one stops within the TTL."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.deps import AuthCache, Context
from api.main import create_app
from relance import ledger, migrate
from relance.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, Context, Clock, str]:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    app = create_app(Settings(database_url=url, auth_cache_seconds=5))
    ctx: Context = app.state.context
    clock = Clock()
    ctx.auth.clock = clock
    ledger.create_app(ctx.engine, "shop", app_key="k1", secret="old-secret")
    return TestClient(app), ctx, clock, "k1"  # no `with`: Temporal is not needed here


def status(client: TestClient, key: str, secret: str) -> int:
    return client.get("/v4/app/providers", auth=(key, secret)).status_code


def test_a_rotated_secret_works_until_the_ttl_then_stops(
    api: tuple[TestClient, Context, Clock, str],
) -> None:
    client, ctx, clock, key = api
    assert status(client, key, "old-secret") == 200
    ledger.create_app(ctx.engine, "shop", app_key=key, secret="new-secret")
    clock.now += 4.9
    assert status(client, key, "old-secret") == 200  # cached: within the TTL
    assert status(client, key, "new-secret") == 200  # not cached: read from the ledger
    clock.now += 0.2
    assert status(client, key, "old-secret") == 401
    assert status(client, key, "new-secret") == 200


def test_a_wrong_secret_is_never_accepted(api: tuple[TestClient, Context, Clock, str]) -> None:
    client, _, _, key = api
    assert status(client, key, "old-secret") == 200
    for wrong in ("old-secre", "old-secret ", "OLD-SECRET", ""):
        assert status(client, key, wrong) == 401
    assert status(client, "k2", "old-secret") == 401
    assert status(client, key, "old-secret") == 200


def test_failures_are_not_cached(api: tuple[TestClient, Context, Clock, str]) -> None:
    client, ctx, _, key = api
    assert status(client, key, "later-secret") == 401
    ledger.create_app(ctx.engine, "shop", app_key=key, secret="later-secret")
    assert status(client, key, "later-secret") == 200


def test_the_cache_holds_no_secret_in_clear() -> None:
    cache = AuthCache(5)
    key = AuthCache.key("k1", "s3cret-value")
    cache.put(key, object())  # type: ignore[arg-type]
    assert all(b"s3cret-value" not in k[1] for k in cache._apps)
    assert "s3cret-value" not in repr(cache._apps)


def test_a_ttl_of_zero_caches_nothing_and_a_full_cache_starts_again() -> None:
    off = AuthCache(0)
    off.put(AuthCache.key("k", "s"), object())  # type: ignore[arg-type]
    assert off.get(AuthCache.key("k", "s")) is None
    small = AuthCache(5, size=2)
    for i in range(3):
        small.put(AuthCache.key(f"k{i}", "s"), object())  # type: ignore[arg-type]
    assert len(small._apps) == 1 and small.get(AuthCache.key("k2", "s")) is not None
