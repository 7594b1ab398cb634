"""EngageLab's official SDK (`client.device`, `client.tag`, `client.alias`) against relance's
real API over HTTP, on the dev server with a worker and the simulator: what a device route
writes, the tag and alias routes read; EngageLab's limits refuse a write whole, with their
codes; a device deleted while a journey waits gets no resend, and the push's funnel keeps it."""

import asyncio
from collections.abc import Iterator
from typing import Any

import engagelab
import httpx
import pytest
from engagelab.device import (
    DeviceSetParam,
    DeviceSetTags,
    DeviceStatusGetParam,
    DeviceTokenRegisterParam,
)
from engagelab.errors import ApiError
from engagelab.tag import TagRegistrationIDs, TagSetParam
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from relance import ledger
from relance.db import Delivery, Device, DeviceTag
from tests.e2e.conftest import Stack, relance_stack
from tests.stack import eventually

SIMULATOR = ["--seed", "3", "--min-delay-ms", "10", "--max-delay-ms", "50"]
SIMULATOR += ["--p-click", "0,0,0", "--p-fail", "0"]
# Small limits, so that passing them costs a handful of requests.
LIMITS = {
    "RELANCE_TAGS_PER_APP": "6",
    "RELANCE_TAGS_PER_DEVICE": "3",
    "RELANCE_DEVICES_PER_TAG": "2",
}


@pytest.fixture(scope="module")
def stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with relance_stack(
        dev_server.client, tmp_path_factory.mktemp("el-devices"), SIMULATOR, extra_env=LIMITS
    ) as s:
        yield s


class App:
    """An app of its own per test (the limits are per app), through the SDK and plain HTTP."""

    def __init__(self, stack: Stack, own: bool = True) -> None:
        self.key, self.secret = (
            ledger.create_app(stack.engine, "sdk") if own else (stack.app_key, stack.master_secret)
        )
        self.sdk = engagelab.Client(self.key, self.secret, base_url=stack.api_url)
        self.http = httpx.Client(base_url=stack.api_url, auth=(self.key, self.secret), timeout=30)
        self.engine = stack.engine

    def register(self, *rids: str, **extra: Any) -> None:
        devices = [{"registration_id": r, **extra} for r in rids]
        answer = self.http.post("/v4/devices", json={"devices": devices})
        assert answer.status_code == 200, answer.text

    def json_tags(self, rid: str) -> list[str]:
        with Session(self.engine) as session:
            device = session.exec(
                select(Device).where(Device.app_key == self.key, Device.registration_id == rid)
            ).one()
            return sorted(device.tags)


@pytest.fixture
def app(stack: Stack) -> Iterator[App]:
    a = App(stack)
    yield a
    a.http.close()


@pytest.fixture
def simulated(stack: Stack) -> Iterator[App]:
    """The app the simulator's devices report as: for tests that need their reports."""
    a = App(stack, own=False)
    yield a
    a.http.close()


def refused(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call(*args)
    return raised.value


def test_tags_set_on_a_device_are_listed_counted_and_seen(app: App) -> None:
    app.register("d1", "d2", platform="android")
    app.register("i1", platform="ios")
    sdk = app.sdk
    sdk.device.set("d1", DeviceSetParam(tags=DeviceSetTags(add=["vip", "news"]), alias="ann"))
    sdk.device.set("i1", DeviceSetParam(tags=DeviceSetTags(add=["vip"])))
    sdk.tag.set("news", TagSetParam(TagRegistrationIDs(add=["d2"])))

    got = sdk.device.get("d1")
    assert (got.tags, got.alias) == (["news", "vip"], "ann")
    assert sdk.tag.list().tags == ["news", "vip"]
    assert sdk.tag.get_count(["vip", "news", "none"], "android").tags_count == {
        "vip": 1,
        "news": 2,
        "none": 0,
    }
    assert sdk.tag.get_count(["vip"], "all").tags_count == {"vip": 2}
    assert sdk.tag.get_device_status("vip", "d1").result is True
    assert sdk.tag.get_device_status("vip", "d2").result is False
    assert sdk.alias.get("ann").registration_ids == ["d1"]
    quota = sdk.tag.get_quota(["vip"], "android").data
    assert quota["totalTagQuota"] == 6 and quota["useTagQuota"] == 2
    assert quota["useAliasQuota"] == 1
    assert quota["tagUidQuotaDetail"] == [{"tagName": "vip", "totalUidQuota": 2, "useUidQuota": 1}]
    # The device's JSON copy follows the tag table.
    assert app.json_tags("d1") == ["news", "vip"] and app.json_tags("d2") == ["news"]

    # A new alias replaces the old; remove, and "" clears every tag.
    sdk.device.set("d1", DeviceSetParam(tags=DeviceSetTags(remove=["news"]), alias="bob"))
    assert sdk.alias.get("ann").registration_ids == []
    assert (sdk.device.get("d1").tags, sdk.device.get("d1").alias) == (["vip"], "bob")
    sdk.device.set("d1", DeviceSetParam(tags="", alias=""))
    got = sdk.device.get("d1")
    assert (got.tags, got.alias) == ([], None) and app.json_tags("d1") == []

    # A tag pushed to reaches who has it now.
    sdk.tag.set("news", TagSetParam(TagRegistrationIDs(remove=["d2"])))
    assert sdk.tag.list().tags == ["vip"]


def test_tag_and_alias_deletion_follow_the_platform(app: App) -> None:
    app.register("a1", platform="android", tags=["sale"], alias="zoe")
    app.register("w1", platform="web", tags=["sale"], alias="zoe")
    sdk = app.sdk
    assert sorted(sdk.alias.get("zoe").registration_ids) == ["a1", "w1"]
    assert sdk.alias.get("zoe", ["web"]).registration_ids == ["w1"]

    sdk.tag.delete("sale", ["web"])
    assert sdk.tag.get_device_status("sale", "w1").result is False
    assert sdk.tag.get_device_status("sale", "a1").result is True
    assert app.json_tags("w1") == []
    sdk.tag.delete("sale")
    sdk.tag.delete("sale")  # again: nothing left to delete, no error
    assert sdk.tag.list().tags == []

    sdk.alias.delete("zoe", ["android"])
    assert sdk.alias.get("zoe").registration_ids == ["w1"]
    sdk.alias.delete("zoe")
    assert sdk.device.get("w1").alias is None


def test_limits_refuse_the_whole_write_with_their_codes(app: App) -> None:
    app.register("d1", "d2", "d3")
    sdk = app.sdk
    sdk.device.set("d1", DeviceSetParam(tags=DeviceSetTags(add=["t1", "t2"])))

    # 100 tags per device (3 here): nothing of the request is kept.
    err = refused(
        sdk.device.set, "d1", DeviceSetParam(tags=DeviceSetTags(add=["t3", "t4"]), alias="x")
    )
    assert (err.status_code, err.error.code) == (400, 27002)
    assert "at most 3 per device" in err.error.message
    got = sdk.device.get("d1")
    assert (got.tags, got.alias) == (["t1", "t2"], None)

    # 100,000 devices per tag (2 here).
    err = refused(sdk.tag.set, "t1", TagSetParam(TagRegistrationIDs(add=["d2", "d3"])))
    assert (err.status_code, err.error.code) == (400, 27003)
    assert sdk.tag.get_count(["t1"], "all").tags_count == {"t1": 1}

    # 100,000 tags per app (6 here): t1, t2 and four more, then a seventh is refused.
    sdk.device.set("d2", DeviceSetParam(tags=DeviceSetTags(add=["t3", "t4", "t5"])))
    sdk.device.set("d3", DeviceSetParam(tags=DeviceSetTags(add=["t6"])))
    err = refused(sdk.device.set, "d3", DeviceSetParam(tags=DeviceSetTags(add=["t7"])))
    assert (err.status_code, err.error.code) == (400, 27001)
    err = refused(sdk.tag.set, "t7", TagSetParam(TagRegistrationIDs(add=["d3"])))
    assert (err.status_code, err.error.code) == (400, 27001)
    assert len(sdk.tag.list().tags) == 6
    # An existing tag is no new tag: still allowed.
    sdk.device.set("d3", DeviceSetParam(tags=DeviceSetTags(add=["t1"])))

    # 40 bytes per tag (a Chinese character is 3): an invalid parameter, named.
    answer = app.http.post("/v4/devices/d1", json={"tags": {"add": ["标签" * 7]}})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == 21003
    assert answer.json()["details"][0]["field"] == "tags.add[0]"
    assert "42 bytes; at most 40" in answer.json()["error"]["message"]


async def test_concurrent_writes_cannot_pass_a_limit_together(app: App) -> None:
    """Two devices at once onto a tag that has room for one more: one of them is refused."""
    app.register("c0", "c1", "c2", tags=[])
    app.sdk.tag.set("hot", TagSetParam(TagRegistrationIDs(add=["c0"])))

    async def tag(rid: str) -> int:
        async with httpx.AsyncClient(
            base_url=str(app.http.base_url), auth=(app.key, app.secret)
        ) as http:
            answer = await http.post(f"/v4/devices/{rid}", json={"tags": {"add": ["hot"]}})
            return answer.status_code

    codes = await asyncio.gather(*(tag(r) for r in ("c1", "c2") * 3))
    assert 200 in codes and 400 in codes
    with Session(app.engine) as session:
        rows = session.exec(
            select(DeviceTag).where(DeviceTag.app_key == app.key, DeviceTag.tag == "hot")
        ).all()
    assert len(rows) == 2


def test_unknown_devices_and_bad_input_are_named(app: App) -> None:
    sdk = app.sdk
    for call, args in (
        (sdk.device.get, ("ghost",)),
        (sdk.device.delete, ("ghost",)),
        (sdk.device.set, ("ghost", DeviceSetParam(alias="a"))),
        (sdk.tag.get_device_status, ("vip", "ghost")),
    ):
        err = refused(call, *args)
        assert (err.status_code, err.error.code) == (404, 21404), call
        assert "ghost" in err.error.message
    err = refused(sdk.tag.set, "vip", TagSetParam(TagRegistrationIDs(add=["ghost"])))
    assert (err.status_code, err.error.code) == (404, 21404)
    assert err.error.message.startswith("registration_ids.add[0]:")

    app.register("d1")
    for path, body, field in (
        ("/v4/devices/d1", {}, "body"),
        ("/v4/devices/d1", {"tags": "x"}, "tags"),
        ("/v4/devices/d1", {"alias": "a b"}, "alias"),
        ("/v4/devices/d1", {"tags": {"add": ["a"], "remove": ["a"]}}, "tags"),
        ("/v4/tags/vip", {"registration_ids": {}}, "registration_ids"),
        ("/v4/devices/status", {"registration_ids": []}, "registration_ids"),
        ("/v4/devices/token/registration_id", {"platform": "hmos", "tokens": ["t"]}, "platform"),
    ):
        answer = app.http.post(path, json=body)
        assert answer.status_code == 400, (path, body, answer.text)
        assert answer.json()["error"]["code"] == 21003
        assert answer.json()["details"][0]["field"] == field, answer.json()
    answer = app.http.get("/v4/tags_count", params={"tags": "vip", "platform": "symbian"})
    assert (answer.status_code, answer.json()["details"][0]["field"]) == (400, "platform")
    assert app.http.get("/v4/tags").status_code == 200
    assert httpx.get(f"{app.http.base_url}/v4/tags").status_code == 401


def test_tokens_register_as_devices(app: App) -> None:
    sdk = app.sdk
    app.register("known", platform="android", tags=["vip"])
    result = sdk.device.register_token(
        DeviceTokenRegisterParam(platform="ios", tokens=["apns-1", "known"])
    )
    assert [(r.token, r.registration_id, r.is_new, r.code) for r in result.results] == [
        ("apns-1", "apns-1", True, 0),
        ("known", "known", False, 0),
    ]
    assert sdk.device.get("apns-1").tags == []
    assert sdk.device.get("known").tags == ["vip"]  # a known device keeps its tags
    again = sdk.device.register_token(DeviceTokenRegisterParam(platform="ios", tokens=["apns-1"]))
    assert again.results[0].is_new is False


async def push(api: httpx.AsyncClient, rids: list[str], resend: dict[str, Any] | None) -> str:
    body: dict[str, Any] = {
        "from": "push",
        "to": {"registration_id": rids},
        "body": {"platform": "android", "notification": {"android": {"alert": "Sale"}}},
    }
    if resend:
        body["resend"] = resend
    answer = await api.post("/v4/push", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["msg_id"])


async def test_device_status_is_the_devices_last_report(simulated: App, stack: Stack) -> None:
    app = simulated
    app.register("s1", "s2")
    sdk = app.sdk
    before = sdk.device.get_status(DeviceStatusGetParam(["s1", "s2"]))
    assert before == [{"regid": "s1", "online": False}, {"regid": "s2", "online": False}]
    async with httpx.AsyncClient(base_url=stack.api_url, auth=(app.key, app.secret)) as api:
        await push(api, ["s1"], None)

        async def reported() -> bool:
            rows = sdk.device.get_status(DeviceStatusGetParam(["s1", "s2"]))
            return bool(rows[0]["online"])

        await eventually(reported, timeout=30)
    s1, s2 = sdk.device.get_status(DeviceStatusGetParam(["s1", "s2"]))
    assert s1["online"] is True and len(s1["last_online_time"]) == len("2026-01-02 03:04:05")
    assert s2 == {"regid": "s2", "online": False}
    err = refused(sdk.device.get_status, DeviceStatusGetParam(["s1", "ghost"]))
    assert (err.status_code, err.error.code) == (404, 21404)
    assert err.error.message.startswith("registration_ids[1]:")


async def test_a_device_deleted_during_the_wait_gets_no_resend(
    simulated: App, stack: Stack
) -> None:
    """Nobody clicks, so the resend goes to every recipient still in the registry: `gone`,
    deleted while the journey waits, is not one of them; the push's funnel still counts what
    stage 0 sent it."""
    app = simulated
    app.register("keep", "gone", tags=["vip"])
    resend = {
        "trigger": {"condition": "not_clicked", "within": "3s"},
        "stages": [{"after": "1s", "notification": {"alert": "Last call"}}],
    }
    async with httpx.AsyncClient(base_url=stack.api_url, auth=(app.key, app.secret)) as api:
        msg_id = await push(api, ["keep", "gone"], resend)

        async def stage0_sent() -> bool:
            funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]
            return bool(funnel["stages"] and funnel["stages"][0]["sent"] == 2)

        await eventually(stage0_sent, timeout=30)
        app.sdk.device.delete("gone")
        assert refused(app.sdk.device.get, "gone").status_code == 404
        assert app.sdk.tag.get_count(["vip"], "all").tags_count == {"vip": 1}

        async def completed() -> bool:
            return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

        await eventually(completed, timeout=60)
        funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]
    with Session(stack.engine) as session:
        stage1 = session.exec(
            select(Delivery.registration_id, Delivery.status).where(
                Delivery.msg_id == msg_id, Delivery.stage == 1
            )
        ).all()
    assert [tuple(r) for r in stage1] == [("keep", "sent")]
    assert funnel["stages"][0]["sent"] == 2  # the past is kept
    assert funnel["stages"][1]["sent"] == 1
