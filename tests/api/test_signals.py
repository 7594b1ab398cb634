"""The signal coalescer: one signal per journey per flush at most, and never two within a
second, whatever RELANCE_SIGNAL_INTERVAL_SECONDS is; marks made meanwhile are kept, not lost."""

from typing import Any

from sqlalchemy.engine import Engine

from api.signals import MIN_SIGNAL_GAP_SECONDS, SignalCoalescer
from relance import ledger
from tests.relance.test_ledger import push, register


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeClient:
    """Records (workflow id, time) of every signal; each takes `latency` of the clock."""

    def __init__(self, clock: Clock, latency: float = 0.0) -> None:
        self.clock, self.latency = clock, latency
        self.sent: list[tuple[str, float]] = []
        self.payloads: list[Any] = []

    def get_workflow_handle(self, workflow_id: str) -> Any:
        client = self

        class Handle:
            async def signal(self, _: Any, payload: Any = None) -> None:
                client.clock.now += client.latency
                client.sent.append((workflow_id, client.clock.now))
                client.payloads.append(payload)

        return Handle()


def coalescer(
    engine: Engine, clock: Clock, latency: float = 0.0, **kw: Any
) -> tuple[SignalCoalescer, Any]:
    c = SignalCoalescer(engine, interval=0.05, task_queue="tq", clock=clock, **kw)
    fake = FakeClient(clock, latency)
    c.client = fake  # type: ignore[assignment]
    return c, fake


async def test_no_journey_gets_two_signals_within_a_second(sqlite_engine: Engine) -> None:
    clock = Clock()
    c, fake = coalescer(sqlite_engine, clock, latency=0.03)
    for step in range(100):  # 5 s of events on two journeys, flushed every 0.05 s
        c.mark({"1", "2"} if step % 3 else {"1"})
        await c.flush()
        clock.now += 0.05
    for wid in ("push-1", "push-2"):
        times = [t for w, t in fake.sent if w == wid]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) >= MIN_SIGNAL_GAP_SECONDS
        assert len(times) >= 4  # still fresh: about one a second


async def test_a_mark_inside_the_gap_is_signalled_once_it_has_passed(
    sqlite_engine: Engine,
) -> None:
    clock = Clock()
    c, fake = coalescer(sqlite_engine, clock)
    c.mark({"1"})
    await c.flush()  # a quiet journey's first signal goes at once
    assert fake.sent == [("push-1", 1000.0)]
    clock.now += 0.5
    c.mark({"1"})
    await c.flush()
    assert len(fake.sent) == 1  # too soon: kept marked
    clock.now += 0.5
    await c.flush()
    assert fake.sent[1] == ("push-1", 1001.0)
    clock.now += 5
    await c.flush()
    assert len(fake.sent) == 2  # nothing new: nothing sent


async def test_per_stage_counts_go_as_often_as_the_push_size_allows(sqlite_engine: Engine) -> None:
    """The per-stage read grows with the push: a push of 30 recipients at 10 recipients read per
    second gets it at most every 3 s; a signal without it leaves one due with it, so the last
    events' per-stage counts still arrive."""
    app = "signals-app"
    ledger.create_app(sqlite_engine, app, "signals-secret-0123456789")
    register(sqlite_engine, app, *({"registration_id": f"d{i:02d}"} for i in range(30)))
    msg_id = push(sqlite_engine, app, "all")
    clock = Clock()
    c, fake = coalescer(sqlite_engine, clock, stage_read_rate=10)

    def stages(i: int) -> list[int]:
        return [s.stage for s in fake.payloads[i].stages]

    c.mark({msg_id})
    await c.flush()  # never read: read at once
    assert (fake.payloads[0].recipients, stages(0)) == (30, [0])
    clock.now += 1.5
    c.mark({msg_id})
    await c.flush()
    assert stages(1) == []  # 1.5 s: 15 recipients' worth, not 30
    clock.now += 1.0
    await c.flush()
    assert len(fake.sent) == 2  # not due yet (3 s after the read)
    clock.now += 0.5
    await c.flush()
    assert len(fake.sent) == 3 and stages(2) == [0]  # due: sent with them, unmarked
    clock.now += 10
    await c.flush()
    assert len(fake.sent) == 3
