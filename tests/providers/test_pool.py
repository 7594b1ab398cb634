"""The providers' sender pool: a failure in one message fails its own batch only, as
`asyncio.gather` did, and closing the pool releases whoever still waits on it."""

import asyncio

import pytest

from activities.providers.pool import SendPool


async def test_an_error_fails_its_batch_and_the_pool_goes_on() -> None:
    async def deliver(n: int) -> int:
        await asyncio.sleep(0)
        if n == 13:
            raise ValueError("unlucky")
        return n * 2

    pool: SendPool[int, int] = SendPool(3, deliver)
    bad, good = await asyncio.gather(
        pool.run(list(range(20))), pool.run(list(range(100, 110))), return_exceptions=True
    )
    assert isinstance(bad, ValueError)
    assert good == [n * 2 for n in range(100, 110)]
    assert await pool.run([1, 2]) == [2, 4]
    await pool.aclose()


async def test_closing_releases_batches_still_queued() -> None:
    gate = asyncio.Event()

    async def deliver(n: int) -> int:
        await gate.wait()
        return n

    pool: SendPool[int, int] = SendPool(1, deliver)
    waiting = asyncio.create_task(pool.run([1, 2, 3]))
    await asyncio.sleep(0.01)
    await pool.aclose()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(waiting, 1)
    last = asyncio.create_task(pool.run([4]))  # the pool starts afresh; only one in flight
    await asyncio.sleep(0.01)
    await pool.aclose()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(last, 1)
