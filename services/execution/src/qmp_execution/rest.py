"""Async client for a REST broker: pooled connections, concurrent requests, timeouts, retries with
backoff, idempotency keys, a primary and a backup endpoint with automatic switch on latency.

Protocol spoken (the fake in `fake_broker.py` implements it): `POST /v1/orders` (BrokerOrder JSON,
header `Idempotency-Key`), `DELETE /v1/orders/<id>`, `GET /v1/positions`, `GET /v1/account`,
`GET /v1/health`. Responses are JSON; 5xx, 429, timeouts and connection errors are retried (the same
idempotency key each time, so an order the broker took before its answer was lost is not sent twice);
other 4xx are final.

Endpoint choice: requests go to the active endpoint (the primary at start). The active one is given up
for the other when `failure_switch` requests in a row fail, or when at least `breach_fraction` of its
last `latency_window` latencies (failures count as the timeout) are above `latency_threshold_ms`. A
background probe measures the inactive endpoint; the client returns to the primary once its last
`min_samples` probes are all fast and successful. No automatic switch happens within `hold_s` of the
previous one (hysteresis: a flapping endpoint cannot make it ping-pong). `force("primary" | "backup")`
pins an endpoint until `force("auto")`.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import aiohttp
import msgspec
from msgspec import Meta, Struct

from qmp_execution.engine.broker import Account, BrokerOrder, OrderAck

log = logging.getLogger(__name__)

PRIMARY, BACKUP = "primary", "backup"
Choice = Literal["primary", "backup", "auto"]


class RestBrokerConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    primary_url: str
    backup_url: str = ""
    api_key: str = ""
    timeout_s: Annotated[float, Meta(gt=0.0)] = 2.0
    retries: Annotated[int, Meta(ge=0)] = 3
    backoff_s: Annotated[float, Meta(ge=0.0)] = 0.05
    backoff_max_s: Annotated[float, Meta(ge=0.0)] = 1.0
    max_connections: Annotated[int, Meta(ge=1)] = 100
    max_concurrency: Annotated[int, Meta(ge=1)] = 100
    latency_threshold_ms: Annotated[float, Meta(gt=0.0)] = 250.0
    latency_window: Annotated[int, Meta(ge=1)] = 20
    min_samples: Annotated[int, Meta(ge=1)] = 5
    breach_fraction: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.5
    failure_switch: Annotated[int, Meta(ge=1)] = 3
    hold_s: Annotated[float, Meta(ge=0.0)] = 5.0
    probe_interval_s: Annotated[float, Meta(gt=0.0)] = 1.0
    seed: int = 0  # backoff jitter


class BrokerUnavailable(RuntimeError):
    """Every attempt failed (timeouts, 5xx, connection errors); the message says what happened last."""


class BrokerRejected(RuntimeError):
    """The broker answered with a final 4xx."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"broker answered {status}: {body[:300]}")
        self.status = status


@dataclass
class Endpoint:
    name: str
    url: str
    window: int
    latencies: deque[float] = field(default_factory=deque)  # ms, failures count as the timeout
    probes: deque[tuple[bool, float]] = field(default_factory=deque)
    requests: int = 0
    errors: int = 0
    consecutive_failures: int = 0

    def record(self, latency_ms: float, ok: bool) -> None:
        self.requests += 1
        self.latencies.append(latency_ms)
        while len(self.latencies) > self.window:
            self.latencies.popleft()
        if ok:
            self.consecutive_failures = 0
        else:
            self.errors += 1
            self.consecutive_failures += 1

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def stats(self) -> dict[str, float]:
        return {"latency_p50_ms": self.quantile(0.5), "latency_p99_ms": self.quantile(0.99),
                "requests": float(self.requests), "errors": float(self.errors),
                "consecutive_failures": float(self.consecutive_failures)}


class RestBrokerClient:
    """A pooled aiohttp client with retries, idempotency keys and primary/backup failover."""

    def __init__(self, config: RestBrokerConfig, now: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.now = now
        self.endpoints = {PRIMARY: Endpoint(PRIMARY, config.primary_url.rstrip("/"), config.latency_window)}
        if config.backup_url:
            self.endpoints[BACKUP] = Endpoint(BACKUP, config.backup_url.rstrip("/"), config.latency_window)
        self.active = PRIMARY
        self.forced = ""
        self.switches = 0
        self._switched_at = -float("inf")
        self._random = random.Random(config.seed)
        self._session: aiohttp.ClientSession | None = None
        self._probe: asyncio.Task[None] | None = None
        self.semaphore = asyncio.Semaphore(config.max_concurrency)
        self._encoder = msgspec.json.Encoder()

    async def __aenter__(self) -> "RestBrokerClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections,
                                         limit_per_host=self.config.max_connections)
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self._session = aiohttp.ClientSession(connector=connector, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        if BACKUP in self.endpoints:
            self._probe = asyncio.create_task(self._probe_loop(), name="rest-broker-probe")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ endpoint choice
    def force(self, choice: Choice) -> None:
        """Pin requests to an endpoint, or (`auto`) let latency decide again."""
        if choice == "auto":
            self.forced = ""
            return
        if choice not in self.endpoints:
            raise ValueError(f"no {choice} endpoint configured (have {sorted(self.endpoints)})")
        self.forced = choice
        self._switch(choice, "forced by command")

    def _switch(self, name: str, why: str) -> None:
        if name == self.active:
            return
        log.warning("broker endpoint switched", extra={"from": self.active, "to": name, "reason": why})
        self.active = name
        self.switches += 1
        self._switched_at = self.now()
        self.endpoints[name].latencies.clear()

    def _other(self, name: str) -> str:
        return BACKUP if name == PRIMARY else PRIMARY

    def _record(self, endpoint: Endpoint, latency_ms: float, ok: bool) -> None:
        endpoint.record(latency_ms, ok)
        if self.forced or endpoint.name != self.active or len(self.endpoints) < 2:
            return
        c = self.config
        other = self.endpoints[self._other(endpoint.name)]
        if other.consecutive_failures >= c.failure_switch or self.now() - self._switched_at < c.hold_s:
            return
        if endpoint.consecutive_failures >= c.failure_switch:
            self._switch(other.name, f"{endpoint.consecutive_failures} failures in a row")
            return
        if len(endpoint.latencies) >= c.min_samples:
            slow = sum(1 for x in endpoint.latencies if x > c.latency_threshold_ms)
            if slow >= c.breach_fraction * len(endpoint.latencies):
                self._switch(other.name, f"{slow}/{len(endpoint.latencies)} latencies above "
                                         f"{c.latency_threshold_ms:g} ms")

    async def _probe_loop(self) -> None:
        """Measure the inactive endpoint; return to the primary when it has been fast for `min_samples` probes."""
        c = self.config
        while True:
            await asyncio.sleep(c.probe_interval_s)
            name = self._other(self.active)
            endpoint = self.endpoints[name]
            ok, latency_ms = await self._probe_once(endpoint)
            endpoint.probes.append((ok, latency_ms))
            while len(endpoint.probes) > c.min_samples:
                endpoint.probes.popleft()
            healthy = len(endpoint.probes) >= c.min_samples and all(
                p_ok and p_ms <= c.latency_threshold_ms for p_ok, p_ms in endpoint.probes)
            if (name == PRIMARY and healthy and not self.forced
                    and self.now() - self._switched_at >= c.hold_s):
                endpoint.probes.clear()
                self._switch(PRIMARY, "primary healthy again")

    async def _probe_once(self, endpoint: Endpoint) -> tuple[bool, float]:
        start = self.now()
        try:
            async with self._require_session().get(f"{endpoint.url}/v1/health") as response:
                await response.read()
                return response.status < 400, (self.now() - start) * 1e3
        except (aiohttp.ClientError, TimeoutError):
            return False, (self.now() - start) * 1e3

    def status(self) -> dict[str, Any]:
        return {"active": self.active, "forced": self.forced, "switches": self.switches,
                "endpoints": {name: e.stats() for name, e in self.endpoints.items()}}

    # ------------------------------------------------------------ requests
    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RestBrokerClient used before start() (or after close())")
        return self._session

    async def request(self, method: str, path: str, body: Any = None, idempotency_key: str = "") -> bytes:
        """Send one request with retries and failover; return the response body; raise on final failure."""
        session = self._require_session()
        c = self.config
        headers = {"Content-Type": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data = self._encoder.encode(body) if body is not None else None
        last = "no attempt"
        for attempt in range(c.retries + 1):
            endpoint = self.endpoints[self.active]
            start = self.now()
            try:
                async with session.request(method, endpoint.url + path, data=data, headers=headers) as response:
                    payload = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                self._record(endpoint, c.timeout_s * 1e3, ok=False)
                last = f"{endpoint.name} {type(error).__name__}: {error}"
            else:
                latency_ms = (self.now() - start) * 1e3
                if status < 500 and status != 429:
                    self._record(endpoint, latency_ms, ok=True)
                    if status >= 400:
                        raise BrokerRejected(status, payload.decode(errors="replace"))
                    return payload
                self._record(endpoint, latency_ms, ok=False)
                last = f"{endpoint.name} answered {status}"
            if attempt < c.retries:
                delay = min(c.backoff_max_s, c.backoff_s * 2**attempt)
                await asyncio.sleep(delay * (0.5 + 0.5 * self._random.random()))
        raise BrokerUnavailable(f"{method} {path} failed after {c.retries + 1} attempts; last: {last}")


class RestBrokerAdapter:
    """The BrokerAdapter interface over a RestBrokerClient."""

    name = "rest"

    def __init__(self, client: RestBrokerClient) -> None:
        self.client = client
        self._ack = msgspec.json.Decoder(OrderAck)
        self._account = msgspec.json.Decoder(Account)
        self._positions = msgspec.json.Decoder(dict[str, float])

    async def submit(self, order: BrokerOrder) -> OrderAck:
        body = await self.client.request("POST", "/v1/orders", order, idempotency_key=order.order_id)
        return self._ack.decode(body)

    async def submit_many(self, orders: Sequence[BrokerOrder]) -> list[OrderAck]:
        """Submit concurrently (bounded by `max_concurrency`); acks in the order of `orders`."""

        async def one(order: BrokerOrder) -> OrderAck:
            async with self.client.semaphore:
                return await self.submit(order)

        return list(await asyncio.gather(*(one(order) for order in orders)))

    async def cancel(self, order: BrokerOrder) -> OrderAck:
        order_id = order.order_id
        body = await self.client.request("DELETE", f"/v1/orders/{order_id}", idempotency_key=f"cancel-{order_id}")
        return self._ack.decode(body)

    async def positions(self) -> dict[str, float]:
        return self._positions.decode(await self.client.request("GET", "/v1/positions"))

    async def account(self) -> Account:
        return self._account.decode(await self.client.request("GET", "/v1/account"))
