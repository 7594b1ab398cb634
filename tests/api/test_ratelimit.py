"""EngageLab's per-app request rate over real HTTP: a fixed one-second window per app, 429 with
code 23008 beyond it, and X-Rate-Limit-* on every answer of an authenticated route (errors too,
and routes added by other routers), with 401 and unknown routes in EngageLab's shape."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import AppDep
from api.main import create_app
from api.ratelimit import RateLimiter
from relance import ledger, migrate
from relance.db import make_engine
from relance.settings import Settings
from tests.stack import free_port, serve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fixed_window_counts_down_and_resets() -> None:
    clock = Clock()
    limiter = RateLimiter(2, clock=clock)
    first, second, third = (limiter.hit("app") for _ in range(3))
    assert first and (first.allowed, first.remaining, first.reset) == (True, 1, 1)
    assert second and (second.allowed, second.remaining) == (True, 0)
    assert third and (third.allowed, third.remaining, third.limit) == (False, 0, 2)
    other = limiter.hit("other-app")
    assert other and other.allowed  # per app
    clock.now += 0.999
    late = limiter.hit("app")
    assert late and not late.allowed
    clock.now += 0.001  # the window is over: a new one starts
    fresh = limiter.hit("app")
    assert fresh and (fresh.allowed, fresh.remaining) == (True, 1)
    assert RateLimiter(0).hit("app") is None  # 0 turns it off


class Thing(BaseModel):
    thing: str


@dataclass
class Api:
    url: str
    key: str
    secret: str
    other: tuple[str, str]
    clock: Clock


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    key, secret = ledger.create_app(engine, "shop")
    other = ledger.create_app(engine, "other")
    engine.dispose()
    app = create_app(Settings(database_url=url, rate_limit_per_second=3))
    clock = Clock()
    app.state.context.limiter = RateLimiter(3, clock=clock)
    later = APIRouter()  # as the other EngageLab routers are added: nothing to do for them

    @later.get("/v4/later/{thing}", response_model=Thing)
    async def later_route(thing: str, _: AppDep) -> Thing:
        return Thing(thing=thing)

    app.include_router(later)
    port = free_port()
    async with serve(app, port):
        yield Api(f"http://127.0.0.1:{port}", key, secret, other, clock)


def rate(response: httpx.Response) -> tuple[str | None, ...]:
    h = response.headers
    return h.get("X-Rate-Limit-Limit"), h.get("X-Rate-Limit-Remaining"), h.get("X-Rate-Limit-Reset")


async def test_over_the_rate_answers_429_23008_with_the_headers(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, auth=(api.key, api.secret)) as http:
        answers = [await http.get("/v4/later/x") for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [rate(r) for r in answers] == [("3", "2", "1"), ("3", "1", "1"), ("3", "0", "1")]

        over = await http.get("/v4/later/x")
        assert over.status_code == 429
        assert over.json()["error"]["code"] == 23008
        assert "3 requests per second" in over.json()["error"]["message"]
        assert rate(over) == ("3", "0", "1") and over.headers["Retry-After"] == "1"

        async with httpx.AsyncClient(base_url=api.url, auth=api.other) as other:
            assert (await other.get("/v4/later/x")).status_code == 200  # per app

        api.clock.now += 1.0  # the next window
        again = await http.get("/v4/later/x")
        assert again.status_code == 200 and rate(again) == ("3", "2", "1")


async def test_errors_of_authenticated_routes_carry_the_headers(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, auth=(api.key, api.secret)) as http:
        missing = await http.get("/v4/push/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == 21404
        assert rate(missing) == ("3", "2", "1")
        invalid = await http.get("/v4/status/detail", params={"message_ids": ",,"})
        assert invalid.status_code == 400 and invalid.json()["error"]["code"] == 21003
        (detail,) = invalid.json()["details"]
        assert detail["field"] == "message_ids"
        assert invalid.json()["error"]["message"] == f"message_ids: {detail['message']}"
        assert rate(invalid) == ("3", "1", "1")


async def test_401_and_unknown_routes_in_engagelabs_shape(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as http:
        anonymous = await http.get("/v4/later/x")
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == 21004
        wrong = await http.get("/v4/later/x", auth=(api.key, "wrong"))
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 21004
        assert rate(wrong) == (None, None, None)  # no app: nothing counted

        unknown = await http.get("/v4/nothing/here")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == {
            "code": 21404,
            "message": "path: no route GET /v4/nothing/here",
        }
        unsupported = await http.post("/v4/grouppush", json={})
        assert unsupported.status_code == 404
        assert unsupported.json()["error"]["code"] == 21501
        assert "group push is not supported by relance" in unsupported.json()["error"]["message"]
