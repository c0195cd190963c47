"""SendSlots: how many full snapshots the control plane sends at once."""

import asyncio

from control_plane.cluster_server import SendSlots


async def test_at_most_slots_holders_at_once_and_each_release_lets_one_in():
    slots = SendSlots(2, hold=60)
    inside = 0
    most = 0
    gate = asyncio.Event()

    async def send() -> None:
        nonlocal inside, most
        async with slots.slot():
            inside += 1
            most = max(most, inside)
            await gate.wait()
            inside -= 1

    tasks = [asyncio.create_task(send()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert inside == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert most == 2


async def test_a_holder_past_its_hold_time_no_longer_blocks_the_others():
    slots = SendSlots(1, hold=0.05)
    stuck = asyncio.Event()

    async def never_done() -> None:
        async with slots.slot():
            await stuck.wait()

    blocker = asyncio.create_task(never_done())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        async with slots.slot():
            pass  # got in after the hold time, although the first has not finished
    stuck.set()
    await blocker
    # Released once only: still one slot.
    async with slots.slot():
        waiting = asyncio.create_task(slots.slot().__aenter__())
        await asyncio.sleep(0.01)
        assert not waiting.done()
    await waiting
