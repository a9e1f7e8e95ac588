"""Helpers for the simulator tests: an HTTP client, metric scraping and bounded polling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

GEMMA = "google/gemma-2b-it"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PHI = "microsoft/Phi-3-mini-4k-instruct"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def scrape(client: aiohttp.ClientSession, url: str) -> Samples:
    """Every sample of ``url``/metrics keyed by (sample name, label set)."""
    async with client.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The single sample named ``name`` whose labels include ``labels``."""
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0]


def labels_of(samples: Samples, name: str) -> dict[str, str]:
    matches = [dict(ls) for (n, ls) in samples if n == name]
    assert len(matches) == 1, f"{name}: {len(matches)} samples"
    return matches[0]


async def eventually(check: Callable[[], object], what: str, limit: float = 15.0) -> None:
    """Poll an async or sync predicate until true; fail naming ``what`` if it never becomes true."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > give_up:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.02)
