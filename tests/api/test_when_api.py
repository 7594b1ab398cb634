"""The when-and-how-often inputs over HTTP: the app policy round trip, device time zones, and
bad input for every new field answered 400/21003 naming the field."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.main import create_app
from relance import ledger, migrate
from relance.db import Device
from relance.settings import Settings


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, Any]:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    app = create_app(Settings(database_url=url, auth_cache_seconds=5))
    ctx = app.state.context
    ledger.create_app(ctx.engine, "shop", app_key="k1", secret="s1")
    client = TestClient(app)  # no `with`: Temporal is not needed here
    client.auth = ("k1", "s1")
    return client, ctx


POLICY = {
    "timezone": "Asia/Singapore",
    "quiet_hours": {"start": "22:00", "end": "08:00"},
    "frequency_caps": [{"max": 3, "per": "1d"}, {"max": 10, "per": "7d"}],
    "throttle_per_minute": 60000,
}


def test_policy_round_trip_and_defaults(api: tuple[TestClient, Any]) -> None:
    client, _ = api
    assert client.get("/v4/app/policy").json() == {
        "timezone": "UTC",
        "quiet_hours": None,
        "frequency_caps": [],
        "throttle_per_minute": None,
    }
    put = client.put("/v4/app/policy", json=POLICY)
    assert put.status_code == 200, put.text
    assert put.json() == POLICY
    assert client.get("/v4/app/policy").json() == POLICY
    # A PUT replaces the policy: what it leaves out goes back to its default.
    assert client.put("/v4/app/policy", json={"timezone": "Europe/Paris"}).status_code == 200
    assert client.get("/v4/app/policy").json()["quiet_hours"] is None


def test_devices_keep_their_time_zone(api: tuple[TestClient, Any]) -> None:
    client, ctx = api
    devices = [{"registration_id": "d1", "timezone": "Europe/Paris"}]
    assert client.post("/v4/devices", json={"devices": devices}).status_code == 200
    again = [{"registration_id": "d1", "tags": ["news"]}]  # no zone: the known one stays
    assert client.post("/v4/devices", json={"devices": again}).status_code == 200
    with Session(ctx.engine) as session:
        device = session.exec(select(Device).where(Device.registration_id == "d1")).one()
    assert device.timezone == "Europe/Paris"


def push(**options: Any) -> dict[str, Any]:
    return {
        "to": {"registration_id": ["d1"]},
        "body": {"notification": {"alert": "hi"}, "options": options},
    }


PAST = (datetime.now(UTC) - timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(
    ("path", "method", "payload", "field"),
    [
        ("/v4/app/policy", "put", {"timezone": "Mars/Olympus"}, "timezone"),
        (
            "/v4/app/policy",
            "put",
            {"quiet_hours": {"start": "22:00", "end": "22:00"}},
            "quiet_hours.end",
        ),
        (
            "/v4/app/policy",
            "put",
            {"quiet_hours": {"start": "9am", "end": "08:00"}},
            "quiet_hours.start",
        ),
        (
            "/v4/app/policy",
            "put",
            {"frequency_caps": [{"max": 0, "per": "1d"}]},
            "frequency_caps[0].max",
        ),
        (
            "/v4/app/policy",
            "put",
            {"frequency_caps": [{"max": 2, "per": "0s"}]},
            "frequency_caps[0].per",
        ),
        ("/v4/app/policy", "put", {"throttle_per_minute": 0}, "throttle_per_minute"),
        (
            "/v4/devices",
            "post",
            {"devices": [{"registration_id": "x", "timezone": "Europe/Pariss"}]},
            "devices[0].timezone",
        ),
        ("/v4/push", "post", push(send_at=PAST), "body.options.send_at"),
        ("/v4/push/validate", "post", push(send_at=PAST), "body.options.send_at"),
        ("/v4/push", "post", push(send_at="2030-01-01T10:00:00"), "body.options.send_at"),
        ("/v4/push", "post", push(local_time="9:00"), "body.options.local_time"),
        ("/v4/push", "post", push(local_time="24:00"), "body.options.local_time"),
        ("/v4/push", "post", push(quiet_hours=True), "body.options.quiet_hours"),
        (
            "/v4/push",
            "post",
            push(quiet_hours={"start": "01:00", "end": "01:00"}),
            "body.options.quiet_hours.end",
        ),
        ("/v4/push", "post", push(frequency_cap=True), "body.options.frequency_cap"),
        ("/v4/push", "post", push(throttle_per_minute=0), "body.options.throttle_per_minute"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    api: tuple[TestClient, Any], path: str, method: str, payload: dict[str, Any], field: str
) -> None:
    client, _ = api
    response = getattr(client, method)(path, json=payload)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]["code"] == 21003
    assert any(d["field"] == field for d in body["details"]), body
