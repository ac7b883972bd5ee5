"""`finetune loadtest`: many concurrent clients posting to a running `finetune serve` for a while.

Each client sends one /predict request at a time (a text drawn from `texts`) and waits for the
answer before the next, as a user-facing caller would; the report counts answers by status code,
failed connections by exception (so a failure names its cause) and gives the latency percentiles
of the successful ones. Bounded in clients and seconds, and meant for a server of your own
(loopback by default).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter

from pipeline.errors import ServiceError


async def _client(client, texts: list[str], deadline: float, seed: int, latencies: list[float], statuses: Counter,
                  errors: Counter) -> None:
    """Post one text at a time until the deadline; a failed connection counts as status 0, and under its exception."""
    import httpx

    pick = random.Random(seed)
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            response = await client.post("/predict", json={"texts": [pick.choice(texts)]})
        except httpx.HTTPError as exc:
            statuses[0] += 1
            errors[describe(exc)] += 1
            continue
        statuses[response.status_code] += 1
        if response.status_code == 200:
            latencies.append(time.perf_counter() - started)


def describe(error: BaseException) -> str:
    """The error's type and the first message down its chain: httpx's ReadError has none of its own,
    the ConnectionResetError under it says what happened."""
    cause: BaseException | None = error
    while cause is not None and not str(cause):
        cause = cause.__cause__ or cause.__context__
    return f"{type(error).__name__}: {cause if cause is not None else 'no message'}"


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile (0.99 for p99) by linear interpolation; 0.0 when there are none."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=1000, method="inclusive")[round(share * 1000) - 1]


async def _check_answers(client, url: str) -> None:
    """One GET /health first: with nothing there, every client would fail at once, for the whole run."""
    import httpx

    try:
        await client.get("/health")
    except httpx.TransportError as exc:
        raise ServiceError(f"nothing answers at {url} ({describe(exc)}); start `finetune serve` there, or pass --url") from None


async def _run(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await _check_answers(client, url)
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(_client(client, texts, deadline, seed, latencies, statuses, errors) for seed in range(clients)))
        elapsed = time.monotonic() - started
    return {
        "url": url,
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": sum(statuses.values()),
        "requests_per_second": round(sum(statuses.values()) / elapsed, 1),
        "status_counts": {str(code): count for code, count in sorted(statuses.items())},
        "server_errors": sum(count for code, count in statuses.items() if code >= 500),
        "failed_connections": statuses[0],
        "failed_connections_by_error": dict(errors.most_common()),
        "p50_latency_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p99_latency_ms": round(1000 * percentile(latencies, 0.99), 1),
    }


def load_test(url: str, texts: list[str], clients: int = 50, seconds: float = 30.0) -> dict:
    """Run `clients` concurrent request loops against `url` for `seconds`; the report described above."""
    if not texts:
        raise ValueError("the load test needs at least one text to send")
    return asyncio.run(_run(url.rstrip("/"), texts, clients, seconds))
