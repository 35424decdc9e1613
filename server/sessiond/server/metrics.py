"""Prometheus metrics of one server (``--metrics-listen HOST:PORT``).

Every :class:`ServerMetrics` owns its own ``CollectorRegistry``: two servers
in one process (tests, an embedding application) never share or clash. The
metrics, all prefixed ``sessiond_``:

==========================================  =========  =========================================
name                                        type       labels / meaning
==========================================  =========  =========================================
``rpc_duration_seconds``                    histogram  method, code — every RPC through the
                                                       interceptor (streams: until the last item)
``rpcs_total``                              counter    method, code
``payload_bytes_total``                     counter    direction (in|out), kind (pack|chunks|
                                                       transcript): PutPack bytes in, GetChunks
                                                       bytes out, transcript Append bytes in
``hydrate_duration_seconds``                histogram  outcome (ok|error): managed sandboxes
``snapshot_duration_seconds``               histogram  trigger, outcome: snapshots the server runs
``snapshot_bytes_total``                    counter    logical bytes of committed snapshots
``snapshot_new_bytes_total``                counter    bytes they uploaded after dedup; the dedup
                                                       ratio is ``rate(new) / rate(bytes)``
``snapshot_new_bytes_ratio``                histogram  new_bytes / bytes per committed snapshot
``active_sandboxes``                        gauge      sandboxes this replica created and has not
                                                       destroyed yet
``lease_conflicts_total``                   counter    reason: ``wait`` (queued behind another
                                                       holder), ``busy`` (gave up: Aborted),
                                                       ``lost`` (taken over while held)
``idempotent_replays_total``                counter    method: responses replayed from a key
==========================================  =========  =========================================

Label values are bounded (method names, status codes, fixed words): never
ids, tenants or content.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from sessiond.client.errors import NotFound

from .sandboxes.provider import Execution, SandboxInfo, SandboxProvider, SandboxSpec

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
_RATIO_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


class ServerMetrics:
    """The metrics of one server, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rpc_duration = Histogram(
            "sessiond_rpc_duration_seconds",
            "RPC latency (streams: until the last response)",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rpcs = Counter("sessiond_rpcs", "RPCs handled", ["method", "code"], registry=r)
        self.payload_bytes = Counter(
            "sessiond_payload_bytes",
            "Payload bytes moved (pack uploads, chunk downloads, transcript appends)",
            ["direction", "kind"],
            registry=r,
        )
        self.hydrate_duration = Histogram(
            "sessiond_hydrate_duration_seconds",
            "Time to hydrate a managed sandbox",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot_duration = Histogram(
            "sessiond_snapshot_duration_seconds",
            "Time to snapshot a managed sandbox",
            ["trigger", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot_bytes = Counter(
            "sessiond_snapshot_bytes", "Logical bytes of committed snapshots", registry=r
        )
        self.snapshot_new_bytes = Counter(
            "sessiond_snapshot_new_bytes",
            "Bytes committed snapshots uploaded after dedup",
            registry=r,
        )
        self.dedup_ratio = Histogram(
            "sessiond_snapshot_new_bytes_ratio",
            "new_bytes / bytes of each committed snapshot (0: all deduplicated)",
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.active_sandboxes = Gauge(
            "sessiond_active_sandboxes",
            "Sandboxes this replica created and has not destroyed",
            registry=r,
        )
        self.lease_conflicts = Counter(
            "sessiond_lease_conflicts",
            "Session lease conflicts",
            ["reason"],
            registry=r,
        )
        self.idempotent_replays = Counter(
            "sessiond_idempotent_replays",
            "Responses replayed for a repeated idempotency key",
            ["method"],
            registry=r,
        )

    # -- recording ---------------------------------------------------------------

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        name = method.lstrip("/")
        self.rpc_duration.labels(name, code).observe(seconds)
        self.rpcs.labels(name, code).inc()

    def add_bytes(self, direction: str, kind: str, count: int) -> None:
        if count > 0:
            self.payload_bytes.labels(direction, kind).inc(count)

    def observe(self, operation: str, trigger: str, seconds: float, ok: bool) -> None:
        """A lifecycle operation finished (``hydrate`` or ``snapshot``);
        :class:`~.core.lifecycle.LifecycleObserver`."""
        outcome = "ok" if ok else "error"
        if operation == "hydrate":
            self.hydrate_duration.labels(outcome).observe(seconds)
        else:
            self.snapshot_duration.labels(trigger or "unknown", outcome).observe(seconds)

    def observe_commit(self, stats: Mapping[str, Any]) -> None:
        """A snapshot was committed with these stats (proto field names)."""
        total = _int(stats.get("bytes"))
        new = _int(stats.get("new_bytes"))
        self.snapshot_bytes.inc(total)
        self.snapshot_new_bytes.inc(new)
        if total > 0:
            self.dedup_ratio.observe(min(new / total, 1.0))

    def lease_conflict(self, reason: str) -> None:
        self.lease_conflicts.labels(reason).inc()

    def replayed(self, method: str) -> None:
        self.idempotent_replays.labels(method).inc()

    # -- exposition --------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Serve ``GET /metrics`` over HTTP on a daemon thread."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsEndpoint(httpd, thread)


class MetricsEndpoint:
    """A running metrics HTTP server; :meth:`close` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port: int = httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _int(value: object) -> int:
    # Stats come from JSON (int64 fields arrive as strings).
    if isinstance(value, int | float | str):
        with contextlib.suppress(ValueError, OverflowError):
            return max(int(value), 0)
    return 0


class MeteredProvider:
    """A :class:`SandboxProvider` that counts the sandboxes this replica
    created and has not destroyed (``sessiond_active_sandboxes``). Sandboxes
    created by another replica and destroyed here are not subtracted."""

    def __init__(self, inner: SandboxProvider, metrics: ServerMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._live: set[str] = set()
        self.name = inner.name

    def _update(self) -> None:
        self._metrics.active_sandboxes.set(len(self._live))

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        info = await self._inner.create(spec)
        self._live.add(info.sandbox_id)
        self._update()
        return info

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Execution:
        return await self._inner.exec(sandbox_id, argv, env=env, cwd=cwd, stdin=stdin)

    async def put_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        await self._inner.put_file(sandbox_id, path, data, mode)

    async def get_file(self, sandbox_id: str, path: str) -> bytes:
        return await self._inner.get_file(sandbox_id, path)

    async def kill_all(self, sandbox_id: str) -> None:
        await self._inner.kill_all(sandbox_id)

    async def describe(self, sandbox_id: str) -> SandboxInfo:
        try:
            return await self._inner.describe(sandbox_id)
        except NotFound:
            self._live.discard(sandbox_id)  # gone behind our back
            self._update()
            raise

    async def destroy(self, sandbox_id: str) -> None:
        await self._inner.destroy(sandbox_id)
        self._live.discard(sandbox_id)
        self._update()

    async def close(self) -> None:
        await self._inner.close()
