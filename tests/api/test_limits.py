"""What a fuzzer or a careless client sends gets a clear 4xx in EngageLab's shape, over real
HTTP, never a 500: integers beyond 64 bits, NUL characters, deeply nested JSON, invalid UTF-8,
bodies over RELANCE_MAX_BODY_BYTES (413), methods a path does not serve (405 with Allow). The
largest legitimate bodies (5,000 devices, 5,000 events) fit under the default limit."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.main import create_app
from relance import ledger, migrate
from relance.db import make_engine
from relance.settings import Settings
from tests.stack import free_port, serve


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    key, secret = ledger.create_app(engine, "t")
    engine.dispose()
    port = free_port()
    settings = Settings(database_url=url, rate_limit_per_second=0)
    async with (
        serve(create_app(settings), port),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", auth=(key, secret), timeout=30
        ) as client,
    ):
        yield client


JSON = {"content-type": "application/json"}


def refused(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= {"error", "details"} and isinstance(body["error"]["code"], int), body
    assert body["error"]["message"], body
    if field is not None:
        assert [d["field"] for d in body["details"]] == [field], body
    return body


async def test_integers_beyond_64_bits_are_invalid_parameters(api: httpx.AsyncClient) -> None:
    big = str(2**64 + 1)
    refused(await api.get("/v4/callbacks/dead", params={"cursor": big}), 400, "cursor")
    refused(await api.post(f"/v4/callbacks/dead/{big}/redeliver"), 400, "batch_id")
    refused(await api.get("/v4/push/1/callbacks", params={"cursor": big}), 400, "cursor")
    # The largest 64-bit id is a valid one, merely unknown.
    refused(await api.post(f"/v4/callbacks/dead/{2**63 - 1}/redeliver"), 404, "batch_id")
    body = {
        "to": "all",
        "body": {"notification": {"alert": "x"}},
        "resend": {
            "trigger": {"condition": "not_clicked", "within": "99999999999999d"},
            "stages": [{"after": "1h"}],
        },
    }
    refused(await api.post("/v4/push/validate", json=body), 400, "resend.trigger.within")


async def test_nul_characters_are_refused_wherever_they_come(api: httpx.AsyncClient) -> None:
    refused(await api.get("/v4/devices/a%00b"), 400, "path")
    refused(await api.get("/v4/status/detail", params={"message_ids": "1\x002"}), 400, "query")
    devices = {"devices": [{"registration_id": "rid\x00", "platform": "android"}]}
    refused(await api.post("/v4/devices", json=devices), 400, "body")
    # An escaped backslash before "u0000" is text, not NUL: stored as written.
    devices = {"devices": [{"registration_id": "rid\\u0000", "platform": "android"}]}
    assert (await api.post("/v4/devices", json=devices)).json() == {"stored": 1}
    assert (await api.get("/v4/devices/rid%5Cu0000")).status_code == 200


async def test_deep_nesting_and_invalid_utf8_are_invalid_json(api: httpx.AsyncClient) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    headers = {"content-type": "application/json"}
    for path in ("/v4/push", "/v4/devices", "/v4/callbacks/engagelab"):
        refused(await api.post(path, content=deep, headers=headers), 400)
        refused(await api.post(path, content=b'{"to": "\xff\xfe"}', headers=headers), 400)
    refused(await api.post("/v4/callbacks/engagelab", json=[None, None]), 400, "body")


async def test_a_body_over_the_limit_is_413(api: httpx.AsyncClient) -> None:
    ten_mb = json.dumps({"devices": [{"registration_id": "x" * 1000}] * 10_000})
    assert len(ten_mb) > 10_000_000
    body = refused(await api.post("/v4/devices", content=ten_mb), 413, "body")
    assert body["error"]["code"] == 21413
    assert "RELANCE_MAX_BODY_BYTES" in body["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b" " * 1_000_000

    refused(await api.post("/v4/events", content=chunks()), 413, "body")


async def test_the_largest_legitimate_bodies_fit_the_default_limit(api: httpx.AsyncClient) -> None:
    limit = Settings().max_body_bytes
    token = "f" * 163  # an FCM registration token's length
    devices = {
        "devices": [
            {
                "registration_id": f"{token}{i:05d}",
                "platform": "android",
                "tags": ["news", "sports", "vip"],
                "alias": f"user-{i}",
                "attributes": {"interests": ["Sneakers", "Tech"], "city": "Lisbon"},
            }
            for i in range(5000)
        ]
    }
    raw = json.dumps(devices).encode()
    assert len(raw) < limit / 1.5, len(raw)
    assert (await api.post("/v4/devices", content=raw, headers=JSON)).json() == {"stored": 5000}
    now = datetime.now(UTC).isoformat()
    events = {
        "events": [
            {
                "msg_id": "1795429543454486250",
                "registration_id": f"{token}{i:05d}",
                "status": "delivered",
                "stage": 0,
                "at": now,
            }
            for i in range(5000)
        ]
    }
    raw = json.dumps(events).encode()
    assert len(raw) < limit / 1.5, len(raw)
    # Read whole and checked event by event: the push is unknown (no Temporal here), not too big.
    refused(await api.post("/v4/events", content=raw, headers=JSON), 404, "events[0].msg_id")


async def test_405_names_every_method_of_the_path(api: httpx.AsyncClient) -> None:
    r = await api.request("TRACE", "/v4/push/123")
    refused(r, 405)
    assert r.headers["allow"] == "GET, HEAD, DELETE"
    r = await api.put("/v4/devices/abc")
    refused(r, 405)
    assert r.headers["allow"] == "GET, HEAD, POST, DELETE"
