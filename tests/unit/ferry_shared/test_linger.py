"""The write-behind's linger: waits its delay unless a flush cuts it short."""

from __future__ import annotations

import asyncio

from ferry_shared.linger import Linger


async def test_a_flush_cuts_the_linger_short_and_waits_for_the_writer() -> None:
    linger = Linger(30.0)
    written: list[str] = []

    async def write() -> None:
        await linger.wait()  # would wait 30 s
        written.append("x")

    task = asyncio.create_task(write())
    await asyncio.sleep(0)
    assert written == []
    await asyncio.wait_for(linger.flush(lambda: task), 5)
    assert written == ["x"] and task.done()
    # After the flush the linger lingers again.
    later = asyncio.create_task(linger.wait())
    await asyncio.sleep(0.01)
    assert not later.done()
    later.cancel()


async def test_no_delay_means_no_wait_and_a_flush_without_a_writer_returns() -> None:
    linger = Linger(0)
    await asyncio.wait_for(linger.wait(), 1)
    await asyncio.wait_for(linger.flush(lambda: None), 1)
