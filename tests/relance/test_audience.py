"""The audience of a push as SQL, on SQLite and PostgreSQL: who `to` and `body.platform` reach,
how many, whether anyone; tags kept in step with registrations; and materialisation in pages
that a crashed attempt can run again without writing anyone twice."""

from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from relance import ledger
from relance.db import Delivery, Device, DeviceTag, Push, Recipient
from relance.ledger import LedgerError
from tests.relance.test_ledger import count, materialise, push_request, recipients, register


@pytest.fixture
def app(engine: Engine) -> str:
    """An app with a registry that every kind of `to` picks from, and a neighbour app whose
    devices share its tags and aliases."""
    key = ledger.create_app(engine, "shop")[0]
    register(
        engine,
        key,
        {"registration_id": "a", "tags": ["news"]},
        {"registration_id": "b", "tags": ["news", "sport"], "alias": "alice"},
        {"registration_id": "c", "tags": ["sport"]},
        {"registration_id": "i", "tags": ["news"], "platform": "ios"},
        {"registration_id": "w", "tags": ["news", "sport"], "platform": "web", "alias": "bob"},
        {"registration_id": "d", "alias": "alice"},
        {"registration_id": "x", "tags": ["news"], "alias": "alice"},
    )
    with Session(engine) as s:  # a dead token: in no audience
        s.execute(update(Device).where(Device.registration_id == "x").values(valid=False))
        s.commit()
    other = ledger.create_app(engine, "other")[0]
    register(engine, other, {"registration_id": "o", "tags": ["news"], "alias": "alice"})
    return key


def audience(engine: Engine, app: str, to: Any, platform: Any = "all") -> list[str]:
    query = ledger.audience_query(app, push_request(to, platform=platform))
    with Session(engine) as s:
        return sorted(row.registration_id for row in s.execute(query))


CASES = [
    ({"tag": ["news"]}, "all", "abiw"),
    ({"tag": ["news", "sport"]}, "all", "abciw"),  # OR, each device once
    ({"tag": ["sport"]}, ["android", "web"], "bcw"),
    ({"tag": ["news"]}, "ios", "i"),
    ({"alias": ["alice"]}, "all", "bd"),
    ({"alias": ["alice", "bob"]}, "android", "bd"),
    ("all", "all", "abcdiw"),
    ("all", "web", "w"),
    ({"registration_id": ["a", "x", "w"]}, "all", "aw"),
    # EngageLab's tag forms, which combine as an intersection.
    ({"tag_and": ["news", "sport"]}, "all", "bw"),
    ({"tag_and": ["sport", "news", "sport"]}, "android", "b"),
    ({"tag": ["news"], "tag_not": ["sport"]}, "all", "ai"),
    ({"tag_and": ["news"], "tag_not": ["sport"]}, "all", "ai"),
    ({"tag": ["sport"], "tag_and": ["news"]}, "all", "bw"),
    ({"tag": ["news", "sport"], "tag_and": ["sport"], "tag_not": ["nobody"]}, "all", "bcw"),
    ({"tag_not": ["news"]}, "all", "cd"),  # everyone without the tag, untagged devices too
    ({"tag_not": ["news", "sport"]}, "all", "d"),
    ({"tag_and": ["sport"], "tag_not": ["news"]}, ["android", "hmos"], "c"),
]


@pytest.mark.parametrize(("to", "platform", "expected"), CASES)
def test_the_audience_is_the_valid_devices_to_and_platform_name(
    engine: Engine, app: str, to: Any, platform: Any, expected: str
) -> None:
    request = push_request(to, platform=platform)
    assert audience(engine, app, to, platform) == list(expected)
    assert ledger.count_audience(engine, app, request) == len(expected)
    assert ledger.has_audience(engine, app, request)
    msg_id = ledger.accept_push(engine, app, request).push.msg_id
    assert materialise(engine, msg_id) == len(expected)
    assert recipients(engine, msg_id) == set(expected)


@pytest.mark.parametrize(
    ("to", "platform"),
    [
        ({"tag": ["nobody-has-this"]}, "all"),
        ({"tag": ["sport", "nobody-has-this"]}, "ios"),
        ({"alias": ["carol"]}, "all"),
        ({"alias": ["alice"]}, "ios"),
        ({"registration_id": ["x"]}, "all"),  # known and invalid: not registered again
        ({"tag_and": ["news", "nobody-has-this"]}, "all"),
        ({"tag": ["sport"], "tag_not": ["sport"]}, "all"),
        ({"tag_and": ["news", "sport"], "tag_not": ["news"]}, "all"),
        ({"tag_not": ["news", "sport"]}, "ios"),
        ({"tag": ["news"]}, "hmos"),  # no device registers as hmos
    ],
)
def test_an_empty_audience_is_found_empty_and_refused(
    engine: Engine, app: str, to: Any, platform: Any
) -> None:
    request = push_request(to, platform=platform)
    assert audience(engine, app, to, platform) == []
    assert not ledger.has_audience(engine, app, request)
    with pytest.raises(LedgerError) as counted:
        ledger.count_audience(engine, app, request)
    with pytest.raises(LedgerError) as accepted:
        ledger.accept_push(engine, app, request)
    assert counted.value.field == accepted.value.field == "to"
    assert "audience is empty" in accepted.value.message
    assert count(engine, Push) == 0


def test_unknown_registration_ids_count_as_accepting_registers_them(
    engine: Engine, app: str
) -> None:
    to = {"registration_id": ["a", "new-1", "new-2"]}
    assert ledger.count_audience(engine, app, push_request(to)) == 3
    assert ledger.count_audience(engine, app, push_request(to, platform="android")) == 3
    assert ledger.count_audience(engine, app, push_request(to, platform="ios")) == 2
    # Registered on android (the push names no single platform): outside an ios or web push.
    with pytest.raises(LedgerError):
        ledger.count_audience(engine, app, push_request(to, platform=["ios", "web"]))
    assert count(engine, Device, registration_id="new-1") == 0, "counting registers nothing"
    accepted = ledger.accept_push(engine, app, push_request(to))
    assert accepted.push.recipients == 3 and accepted.push.audience_ready
    assert recipients(engine, accepted.push.msg_id) == {"a", "new-1", "new-2"}


def test_tags_are_replaced_when_a_device_registers_again(engine: Engine, app: str) -> None:
    register(engine, app, {"registration_id": "a", "tags": ["sport", "sport", "vip"]})
    register(engine, app, {"registration_id": "b"})
    assert audience(engine, app, {"tag": ["news"]}) == ["i", "w"]
    assert audience(engine, app, {"tag": ["sport"]}) == ["a", "c", "w"]
    assert audience(engine, app, {"tag": ["vip"]}) == ["a"]
    with Session(engine) as s:
        rows = s.execute(
            select(DeviceTag.tag)
            .join(Device, Device.id == DeviceTag.device_id)
            .where(Device.registration_id == "a", Device.app_key == app)
        )
        assert sorted(rows.scalars()) == ["sport", "vip"]
        assert s.execute(select(Device.tags).where(Device.registration_id == "a")).scalar() == [
            "sport",
            "sport",
            "vip",
        ], "the device keeps its own record as registered"
    # A dead token that registers again is in the audience again, with its new tags.
    register(engine, app, {"registration_id": "x", "tags": ["vip"]})
    assert audience(engine, app, {"tag": ["vip"]}) == ["a", "x"]


# ---- materialising --------------------------------------------------------------------------


def rows(engine: Engine, msg_id: str) -> tuple[list[str], list[str]]:
    """Every Recipient and stage-0 Delivery of a push, duplicates kept (there must be none)."""
    with Session(engine) as s:
        r = s.execute(select(Recipient.registration_id).where(Recipient.msg_id == msg_id))
        d = s.execute(
            select(Delivery.registration_id).where(Delivery.msg_id == msg_id, Delivery.stage == 0)
        )
        return sorted(r.scalars()), sorted(d.scalars())


def test_accepting_a_tag_push_writes_no_recipient(engine: Engine, app: str) -> None:
    accepted = ledger.accept_push(engine, app, push_request({"tag": ["news"]}, "r-1"))
    push = accepted.push
    assert accepted.created and not push.audience_ready and push.recipients == 0
    assert (count(engine, Recipient), count(engine, Delivery)) == (0, 0)
    again = ledger.accept_push(engine, app, push_request({"tag": ["news"]}, "r-1"))
    assert not again.created and again.push.msg_id == push.msg_id
    assert ledger.funnel(engine, push.msg_id).recipients == 0
    assert materialise(engine, push.msg_id) == 4
    done = ledger.get_push(engine, app, push.msg_id)
    assert done.audience_ready and done.recipients == 4
    assert ledger.funnel(engine, push.msg_id).recipients == 4


def test_pages_of_two_write_the_audience_once_and_a_retry_writes_nothing(
    engine: Engine, app: str
) -> None:
    register(engine, app, *({"registration_id": f"m{i}", "tags": ["many"]} for i in range(7)))
    expected = sorted(f"m{i}" for i in range(7))
    msg_id = ledger.accept_push(engine, app, push_request({"tag": ["many"]})).push.msg_id
    seq = ledger.progress(engine, msg_id).seq

    cursors, cursor, written = [], 0, 0
    while True:
        last, inserted = ledger.materialise_page(engine, msg_id, cursor, 2)
        if last is None:
            break
        assert last > cursor
        cursors.append(last)
        cursor, written = last, written + inserted
    assert len(cursors) == 4 and written == 7
    assert rows(engine, msg_id) == (expected, expected)

    # The attempt crashed before its heartbeat: the retry starts from an older cursor.
    for start in (0, cursors[1]):
        cursor, again = start, 0
        while cursor is not None:
            cursor, inserted = ledger.materialise_page(engine, msg_id, cursor, 2)
            again += inserted
        assert again == 0
    assert rows(engine, msg_id) == (expected, expected)

    assert ledger.finish_materialise(engine, msg_id) == 7
    assert ledger.finish_materialise(engine, msg_id) == 7
    progress = ledger.progress(engine, msg_id)
    assert progress.recipients == 7 and progress.seq > seq
    assert ledger.get_push(engine, app, msg_id).audience_ready


def _chunk_deliveries(engine: Engine, msg_id: str, after: int, upto: int) -> list[str]:
    with Session(engine) as s:
        found = s.execute(
            select(Delivery.registration_id).where(
                Delivery.msg_id == msg_id,
                Delivery.stage == 0,
                Delivery.id > after,
                Delivery.id <= upto,
            )
        )
        return sorted(found.scalars())


@pytest.mark.parametrize("devices", [7, 6], ids=["short-last-chunk", "exact-chunks"])
def test_chunks_cover_the_audience_in_ranges_a_send_can_start_on(
    engine: Engine, app: str, devices: int
) -> None:
    """A streamed audience, in chunks of 3: each chunk's stage-0 deliveries are exactly those
    with ids after the previous chunk's upto_id, up to its own; the chunks together are the
    audience, once; the last marks it ready with its count. A chunk written again (a retried
    activity) adds nothing and says the same, and so does any chunk once the audience is ready."""
    register(engine, app, *({"registration_id": f"m{i}", "tags": ["many"]} for i in range(devices)))
    expected = sorted(f"m{i}" for i in range(devices))
    msg_id = ledger.accept_push(engine, app, push_request({"tag": ["many"]})).push.msg_id

    chunks, cursor, upto = [], 0, 0
    while True:
        chunk = ledger.materialise_chunk(engine, msg_id, cursor, 3)
        # Again (a retry; for the last one, of a chunk that marked the audience ready).
        assert ledger.materialise_chunk(engine, msg_id, cursor, 3) == chunk
        chunks.append(_chunk_deliveries(engine, msg_id, upto, chunk.upto_id))
        upto = chunk.upto_id
        if chunk.cursor is None:
            break
        assert chunk.recipients is None
        assert not ledger.get_push(engine, app, msg_id).audience_ready
        cursor = chunk.cursor
    assert chunk.recipients == devices
    assert [len(c) for c in chunks] == ([3, 3, 1] if devices == 7 else [3, 3, 0])
    assert sorted(r for c in chunks for r in c) == expected
    assert rows(engine, msg_id) == (expected, expected)
    push = ledger.get_push(engine, app, msg_id)
    assert push.audience_ready and push.recipients == devices
    assert ledger.materialise_chunk(engine, msg_id, 0, 3) == chunk  # ready: nothing more


def test_a_page_crashed_half_way_is_completed_by_the_retry(engine: Engine, app: str) -> None:
    """A recipient is written with its delivery or not at all; a retry fills what is missing."""
    register(engine, app, *({"registration_id": f"m{i}", "tags": ["many"]} for i in range(7)))
    msg_id = ledger.accept_push(engine, app, push_request({"tag": ["many"]})).push.msg_id
    last, _ = ledger.materialise_page(engine, msg_id, 0, 3)
    assert last is not None
    with Session(engine) as s:  # as if the first page had only partly been written
        s.execute(
            Delivery.__table__.delete().where(
                Delivery.msg_id == msg_id, Delivery.registration_id == "m1"
            )
        )
        s.execute(
            Recipient.__table__.delete().where(
                Recipient.msg_id == msg_id, Recipient.registration_id == "m2"
            )
        )
        s.commit()
    assert materialise(engine, msg_id, page=3) == 7
    expected = sorted(f"m{i}" for i in range(7))
    assert rows(engine, msg_id) == (expected, expected)


def test_materialising_reads_the_registry_as_it_is_then(engine: Engine, app: str) -> None:
    """Accepted while the tag had devices; by the time the journey runs, one is dead and one
    new: the journey sends to who the tag names then, never to a dead token."""
    msg_id = ledger.accept_push(engine, app, push_request({"tag": ["sport"]})).push.msg_id
    ledger.invalidate_device(engine, app, "c", "Unregistered")
    register(engine, app, {"registration_id": "late", "tags": ["sport"]})
    assert materialise(engine, msg_id) == 3
    assert recipients(engine, msg_id) == {"b", "w", "late"}


def test_a_registration_id_push_is_ready_when_accepted(engine: Engine, app: str) -> None:
    push = ledger.accept_push(engine, app, push_request({"registration_id": ["a", "b"]})).push
    assert push.audience_ready and push.recipients == 2
    assert rows(engine, push.msg_id) == (["a", "b"], ["a", "b"])
    with Session(engine) as s:
        total = s.execute(select(func.count()).select_from(Recipient)).scalar_one()
    assert total == 2


def test_the_registrys_statistics_are_refreshed_only_when_stale(engine: Engine, app: str) -> None:
    """On PostgreSQL, devices registered in bulk just before a push get the planner statistics
    that materialising needs, once; on SQLite there is nothing to do."""
    register(engine, app, *({"registration_id": f"bulk-{i}", "tags": ["bulk"]} for i in range(50)))
    first = ledger.refresh_statistics(engine)
    again = ledger.refresh_statistics(engine)
    if engine.dialect.name == "postgresql":
        assert sorted(first) == ["device", "devicetag"]
    else:
        assert first == []
    assert again == []
