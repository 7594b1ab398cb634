"""Tags and aliases in the ledger, on SQLite and PostgreSQL: a limit check and its write are
one step (concurrent writers cannot pass a limit together), a refused write leaves nothing,
and deleting a device keeps what its pushes recorded."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from relance import ledger
from relance.db import Delivery, Device, Recipient
from relance.ledger import LimitExceeded
from relance.ledger.tags import TOO_MANY_APP_TAGS, TOO_MANY_TAG_DEVICES
from relance.models import DeviceIn, PushRequest

LIMITS = ledger.Limits(tags_per_app=3, tags_per_device=2, devices_per_tag=2)


@pytest.fixture
def app(engine: Engine) -> str:
    key = ledger.create_app(engine, "shop")[0]
    ledger.upsert_devices(engine, key, [DeviceIn(registration_id=f"d{i}") for i in range(8)])
    return key


def test_concurrent_writers_cannot_pass_a_limit_together(engine: Engine, app: str) -> None:
    """Eight devices at once onto a tag with room for two, and eight new tags at once into an
    app with room for three: exactly the room is used, the rest refused with its code."""

    def tag_device(i: int) -> int:
        try:
            ledger.set_tag(engine, app, "hot", [f"d{i}"], [], LIMITS)
            return 0
        except LimitExceeded as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(tag_device, range(8)))
    assert sorted(codes) == [0, 0] + [TOO_MANY_TAG_DEVICES] * 6
    assert ledger.count_tags(engine, app, ["hot"], None) == {"hot": 2}

    def new_tag(i: int) -> int:
        try:
            ledger.set_device(engine, app, f"d{i}", LIMITS, add=[f"new{i}"])
            return 0
        except LimitExceeded as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(new_tag, range(8)))
    assert sorted(codes) == [0, 0] + [TOO_MANY_APP_TAGS] * 6  # "hot" was the first
    assert len(ledger.list_tags(engine, app)) == 3


def test_a_refused_write_leaves_nothing(engine: Engine, app: str) -> None:
    ledger.set_device(engine, app, "d0", LIMITS, add=["a"], alias="ann")
    with pytest.raises(LimitExceeded):
        ledger.set_device(engine, app, "d0", LIMITS, remove=["a"], add=["b", "c", "d"], alias="bo")
    info = ledger.get_device(engine, app, "d0")
    assert (info.tags, info.alias) == (["a"], "ann")
    with Session(engine) as session:
        device = session.exec(select(Device).where(Device.registration_id == "d0")).one()
        assert device.tags == ["a"]


def test_deleting_a_device_keeps_its_pushes_records(engine: Engine, app: str) -> None:
    request = PushRequest.model_validate(
        {"to": {"registration_id": ["d1", "d2"]}, "body": {"notification": {"alert": "Hi"}}}
    )
    msg_id = ledger.accept_push(engine, app, request).push.msg_id
    ledger.set_tag(engine, app, "vip", ["d1", "d2"], [], LIMITS)
    ledger.delete_device(engine, app, "d1")

    with pytest.raises(ledger.NotFound):
        ledger.get_device(engine, app, "d1")
    assert ledger.count_tags(engine, app, ["vip"], None) == {"vip": 1}
    with Session(engine) as session:
        recipients = session.exec(
            select(Recipient.registration_id).where(Recipient.msg_id == msg_id)
        ).all()
        deliveries = session.exec(
            select(Delivery.registration_id).where(Delivery.msg_id == msg_id)
        ).all()
    assert sorted(recipients) == ["d1", "d2"] and sorted(deliveries) == ["d1", "d2"]
    # The resend goes only to devices still registered.
    assert ledger.select_resend_audience(engine, msg_id, 1) == 1


def test_bulk_registration_is_held_to_the_same_limits(engine: Engine, app: str) -> None:
    """`POST /v4/devices` cannot get around the tag routes' limits: a batch that would put a
    tag on too many devices, a device over its tags, or the app over its tags is refused whole,
    with the limit's code, and leaves every device as it was."""
    from relance.ledger.tags import TOO_MANY_DEVICE_TAGS

    def register(devices: list[DeviceIn]) -> int:
        try:
            ledger.upsert_devices(engine, app, devices, LIMITS)
            return 0
        except LimitExceeded as exc:
            return exc.code

    ok = [DeviceIn(registration_id=f"d{i}", tags=["hot"]) for i in range(2)]
    assert register(ok) == 0
    assert register([DeviceIn(registration_id="d2", tags=["hot"])]) == TOO_MANY_TAG_DEVICES
    assert register([DeviceIn(registration_id="d3", tags=["a", "b", "c"])]) == (
        TOO_MANY_DEVICE_TAGS
    )
    assert register([DeviceIn(registration_id="d4", tags=["a"])]) == 0
    assert register([DeviceIn(registration_id="d5", tags=["b"])]) == 0
    assert register([DeviceIn(registration_id="d6", tags=["c"])]) == TOO_MANY_APP_TAGS
    assert ledger.count_tags(engine, app, ["hot", "a", "b", "c"], None) == {
        "hot": 2,
        "a": 1,
        "b": 1,
        "c": 0,
    }
    assert ledger.get_device(engine, app, "d2").tags == []  # the refused batch left nothing
    with pytest.raises(ledger.LedgerError) as named:
        ledger.upsert_devices(
            engine, app, [DeviceIn(registration_id="d7", tags=["x" * 41])], LIMITS
        )
    assert named.value.field == "devices[0].tags[0]"
