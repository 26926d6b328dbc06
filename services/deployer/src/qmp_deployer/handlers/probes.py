"""Service-wide gate inputs the deployer measures itself: API latency and memory.

API latency is the execution broker's p99 latency on its active endpoint (`qmp.broker.<instance>` status),
or, without a REST broker, what the latency service reports as `api_latency_ms` in its health detail, or
else the round trip of its health request (the path an order takes through NATS and the service's loop).
Memory is the largest resident set among the QMP services: `rss_bytes` from a health reply when a service
reports it, else (`local`, one machine, as under `qmp up`) psutil on the pid the reply gives; the
deployer's own process counts too.
"""

import logging
import math

import msgspec
import nats
import psutil
from nats.aio.client import Client

from qmp_core import subjects
from qmp_core.clock import Clock
from qmp_core.messages import BrokerCommand, BrokerReply, HealthReply, codec, encode

log = logging.getLogger(__name__)
MB = 1024.0 * 1024.0
REPORTED_LATENCY = "api_latency_ms"  # a health detail key: the broker API latency a service measures itself


class Probes:
    def __init__(self, nc: Client, wall: Clock, latency_service: str, memory_services: list[str],
                 memory_probe: str, timeout_s: float, broker_instance: str = subjects.DEFAULT_EXECUTION_INSTANCE,
                 ) -> None:
        self.nc = nc
        self.broker_instance = broker_instance
        self.wall = wall
        self.latency_service = latency_service
        self.memory_services = memory_services
        self.memory_probe = memory_probe
        self.timeout_s = timeout_s
        self._decoder = codec(HealthReply)

    async def latency_ms(self) -> tuple[float | None, str]:
        """Return the API latency in ms, or None and why: the broker's p99 on its active endpoint when a REST
        broker answers `qmp.broker.<instance>`, else what the latency service reports, else its health round trip."""
        broker = await self._broker_latency()
        if broker is not None:
            return broker
        start = self.wall.now_ns()
        try:
            reply = await self.nc.request(subjects.health(self.latency_service), b"", timeout=self.timeout_s)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
            return None, f"no health reply from {self.latency_service} in {self.timeout_s:g}s ({type(error).__name__})"
        round_trip = (self.wall.now_ns() - start) / 1e6
        try:
            reported = self._decoder.decode(reply.data).detail.get(REPORTED_LATENCY)
        except msgspec.DecodeError:
            reported = None
        if isinstance(reported, int | float) and not isinstance(reported, bool):
            return float(reported), f"{self.latency_service} reports {REPORTED_LATENCY}"
        return round_trip, f"{self.latency_service} health round trip"

    async def _broker_latency(self) -> tuple[float, str] | None:
        status = encode(BrokerCommand(command="status", issued_by="deployer"))
        try:
            reply = await self.nc.request(subjects.broker(self.broker_instance), status, timeout=self.timeout_s)
            broker = codec(BrokerReply).decode(reply.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, msgspec.DecodeError):
            return None  # no REST broker (paper trading): fall back to the service's own measure
        p99 = broker.endpoints.get(broker.active, {}).get("latency_p99_ms")
        if p99 is None or not math.isfinite(p99):
            return None
        return float(p99), f"broker {broker.active} endpoint p99"

    async def memory_mb(self) -> tuple[float | None, str]:
        """Return the largest RSS in MB among the services that could be measured, with who it was."""
        if self.memory_probe == "off":
            return None, "memory probe off"
        sizes = {"deployer": float(psutil.Process().memory_info().rss)}
        for service in self.memory_services:
            size = await self._service_rss(service)
            if size is not None:
                sizes[service] = size
        largest = max(sizes, key=lambda name: sizes[name])
        return sizes[largest] / MB, f"largest: {largest} of {sorted(sizes)}"

    async def _service_rss(self, service: str) -> float | None:
        try:
            reply = await self.nc.request(subjects.health(service), b"", timeout=self.timeout_s)
            health = self._decoder.decode(reply.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, msgspec.DecodeError):
            return None
        reported = health.detail.get("rss_bytes")
        if isinstance(reported, int | float):
            return float(reported)
        if self.memory_probe != "local":
            return None
        try:
            return float(psutil.Process(health.pid).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
