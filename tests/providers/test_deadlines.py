"""Provider request limits kept by one watchdog: past the limit the block raises TimeoutError;
a cancellation from elsewhere stays a cancellation; a block that ends in time is untouched."""

import asyncio

import pytest

from activities.providers.deadlines import Deadlines


async def test_past_its_limit_a_block_raises_timeout_error() -> None:
    deadlines = Deadlines(0.2, tick=0.05)
    with pytest.raises(TimeoutError):
        async with deadlines.guard():
            await asyncio.sleep(5)
    async with deadlines.guard():  # the task can be guarded again, and ends in time
        await asyncio.sleep(0.01)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await deadlines.aclose()


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    deadlines = Deadlines(10, tick=0.05)

    async def guarded() -> None:
        async with deadlines.guard():
            await asyncio.sleep(5)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await deadlines.aclose()


async def test_many_blocks_time_out_each_on_its_own() -> None:
    deadlines = Deadlines(0.2, tick=0.05)

    async def wait(seconds: float) -> str:
        try:
            async with deadlines.guard():
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timeout"
        return "done"

    got = await asyncio.gather(*(wait(0.01 if i % 2 else 5) for i in range(20)))
    assert got == ["timeout", "done"] * 10
    await deadlines.aclose()
