"""Kong's ``spec/02-integration/05-proxy/10-balancer/05-stress_spec.lua``, case by case
(``05-stress.lua`` is the same file under its earlier name).

Kong's stress generator sends 200 requests a second for 3 s; here 200 requests a second
for 1 s from concurrent clients (the whole module stays fast) and the same checks: no
proxy failure, and every success reached a target. Kong's targets are names resolving
to 127.0.0.1 (``a.stressed.test``, ``localhost``); here the IP itself.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.support.kong import KongCluster, add_api, add_target, add_upstream

SPEC = "05-stress_spec.lua"


async def _stress(proxy: str, headers: dict[str, str], seconds: float = 1.0, rate: int = 200) -> tuple[int, int]:
    """(successes, proxy failures) of ``rate`` requests a second for ``seconds``."""
    successes = failures = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal successes, failures
        try:
            async with session.get(f"{proxy}/", headers=headers) as response:
                await response.read()
                if response.status == 200:
                    successes += 1
                else:
                    failures += 1
        except aiohttp.ClientError:
            failures += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        tasks = []
        start = time.monotonic()
        for i in range(int(seconds * rate)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing of the generator, not a wait for state
            tasks.append(asyncio.create_task(one(session)))
        await asyncio.gather(*tasks)
    return successes, failures


async def _case(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, n: int, headers: dict[str, str] | None = None, **upstream: object) -> None:  # type: ignore[no-untyped-def]
    servers = [await spec_servers() for _ in range(n)]
    name, uid = await add_upstream(kong, http, **upstream)
    for s in servers:
        await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    successes, failures = await _stress(dp.proxy, {"Host": host, **(headers or {})})
    assert failures == 0
    assert successes == sum(s.total for s in servers)


async def test_round_robin_with_single_target(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("round-robin with single target") — 05-stress_spec.lua."""
    await _case(kong, http, spec_servers, 1)


async def test_round_robin_with_multiple_targets(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("round-robin with multiple targets") — 05-stress_spec.lua."""
    await _case(kong, http, spec_servers, 3)


async def test_consistent_hashing(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("consistent-hashing") — 05-stress_spec.lua (``hash_on`` header without
    ``algorithm``, as Kong's; the checks hold whichever algorithm balances)."""
    await _case(kong, http, spec_servers, 3, {"x-stressed": "gogo"}, hash_on="header", hash_on_header="x-stressed")


async def test_least_connections(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("least-connections") — 05-stress_spec.lua."""
    await _case(kong, http, spec_servers, 3, algorithm="least-connections")
