"""Health: SERVING only while the stores answer.

A background task probes the metadata store and the blob store every few
seconds and flips the standard ``grpc.health.v1`` status for the server ("")
and for each sessiond service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from sessiond.client.errors import SessiondError

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Probe = Callable[[], Awaitable[None]]


class HealthMonitor:
    def __init__(
        self,
        servicer: HealthServicer,
        services: Sequence[str],
        probes: dict[str, Probe],
        interval: float,
        probe_timeout: float = 5.0,
    ) -> None:
        self._servicer = servicer
        self._services = ["", *services]
        self._probes = probes
        self._interval = interval
        self._timeout = probe_timeout
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    async def check_once(self) -> bool:
        """Probe every store; set and return the resulting status."""
        failures: list[str] = []
        for name, probe in self._probes.items():
            try:
                await asyncio.wait_for(probe(), self._timeout)
            except (SessiondError, TimeoutError, OSError) as exc:
                failures.append(f"{name}: {exc or type(exc).__name__}")
        serving = not failures
        if serving != self._serving:
            if serving:
                log.info("health: SERVING")
            else:
                log.warning("health: NOT_SERVING (%s)", "; ".join(failures))
            self._serving = serving
        for service in self._services:
            await self._servicer.set(service, SERVING if serving else NOT_SERVING)
        return serving

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._servicer.enter_graceful_shutdown()
