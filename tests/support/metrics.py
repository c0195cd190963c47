"""Reading ``/metrics``: one Prometheus text answer parsed with Prometheus' own parser."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One ``/metrics`` answer, parsed with Prometheus' own text parser."""

    def __init__(self, text: str, content_type: str = "") -> None:
        self.text = text
        self.content_type = content_type
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, sample: str) -> list[Any]:
        """Every sample named ``sample`` (e.g. ``kong_kong_latency_ms_count``)."""
        return [s for f in self.families.values() for s in f.samples if s.name == sample]

    def get(self, sample: str, **labels: str) -> float | None:
        """The value of the one sample with exactly ``labels``; ``None`` if absent."""
        found = [s.value for s in self.samples(sample) if s.labels == labels]
        assert len(found) <= 1, (sample, labels, found)
        return float(found[0]) if found else None

    def value(self, sample: str, **labels: str) -> float:
        got = self.get(sample, **labels)
        assert got is not None, f"no {sample}{labels} in:\n{self.text}"
        return got

    def requests_total(self) -> float:
        """The sum of every ``kong_http_requests_total`` series."""
        return sum(float(s.value) for s in self.samples("kong_http_requests_total"))


async def scrape(http: aiohttp.ClientSession, status_url: str) -> Scrape:
    async with http.get(f"{status_url}/metrics") as response:
        assert response.status == 200, await response.text()
        return Scrape(await response.text(), response.headers.get("Content-Type", ""))
