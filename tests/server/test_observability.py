"""Metrics and structured logs.

* ``/metrics`` over HTTP: RPC latency and counts by method and code, payload
  bytes, snapshot stats (dedup ratio), hydrate/snapshot durations, active
  sandboxes, lease conflicts — per server (two servers in one process do not
  share a registry), and never ids, tenants or content in labels.
* ``--log-format json``: one JSON object per line with ts, level, logger, msg
  and the RPC's fields; and no content or secret ever reaches the logs.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sessiond.api.v1 import common_pb2, format_pb2, transcripts_pb2, workspace_pb2
from sessiond.client import Aborted, AsyncClient, NotFound
from sessiond.client import workspace_format as fmt
from sessiond.hydrator.remote import PendingChunk, WorkspaceRemote
from sessiond.server import logformat
from sessiond.server.core.leases import LeaseManager
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.services import free_port
from tests.helpers import assert_eventually, clean_env, spawn_server, wait_serving

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def http_samples(server: RunningServer) -> Samples:
    endpoint = server.server.metrics_endpoint
    assert endpoint is not None
    return samples(await asyncio.to_thread(scrape, endpoint.port))


def pending(key: bytes, data: bytes, kind: int = workspace_pb2.CHUNK_KIND_DATA) -> PendingChunk:
    return PendingChunk(
        chunk_id=fmt.chunk_id(key, data),
        kind=kind,  # type: ignore[arg-type]
        frame=fmt.compress(data),
        raw_length=len(data),
    )


async def snapshot_flow(client: AsyncClient, stats: common_pb2.SnapshotStats) -> int:
    """Upload one file and commit a snapshot of it with ``stats``; read the
    chunks back. Returns the pack's data size."""
    session = await client.create_session()
    remote = WorkspaceRemote(client, session.session_id)
    ws = await remote.workspace(acquire_lease=True)
    body = os.urandom(50_000)
    data = pending(ws.chunk_key, body)
    tree = fmt.serialize_tree(
        [
            format_pb2.Node(
                name=b"f", type=fmt.FILE, mode=0o644, size=len(body), chunk_ids=[data.chunk_id]
            )
        ]
    )
    root = pending(ws.chunk_key, tree, workspace_pb2.CHUNK_KIND_TREE)
    await remote.put_pack([data, root])
    manifest = format_pb2.Manifest(version=1, root_tree_id=root.chunk_id, source_cwd=b"/w")
    mid = await remote.put_manifest(manifest.SerializeToString(deterministic=True))
    await remote.commit(
        workspace_pb2.CommitSnapshotRequest(
            manifest_id=mid,
            lease_epoch=ws.lease_epoch,
            trigger=common_pb2.SNAPSHOT_TRIGGER_MANUAL,
            stats=stats,
        )
    )
    got = [c async for c in remote.get_chunks([data.chunk_id])]
    assert len(got) == 1
    return len(data.frame) + len(root.frame)


async def test_metrics_over_http(metadata_url: str, tmp_path: Path) -> None:
    async with run_server(tmp_path / "srv", metadata_url, metrics_listen="127.0.0.1:0") as server:
        tenant_id, token = await server.new_tenant()
        client = await server.client(token)
        created = await client.create_session()
        with pytest.raises(NotFound):
            await client.get_session("no-such-session")
        entries = [json.dumps({"type": "user", "uuid": f"u{i}", "n": i}) for i in range(3)]
        await client.append_entries(
            transcripts_pb2.SessionKey(project_key="p", session_id="s"), entries
        )
        packed = await snapshot_flow(
            client, common_pb2.SnapshotStats(bytes=1000, new_bytes=250, files=1)
        )

        found = await http_samples(server)
        rpcs = "sessiond_rpcs_total"
        create = "sessiond.v1.SessionService/CreateSession"
        assert value(found, rpcs, method=create, code="OK") == 2  # + snapshot_flow's
        get = "sessiond.v1.SessionService/GetSession"
        assert value(found, rpcs, method=get, code="NOT_FOUND") == 1
        hist = "sessiond_rpc_duration_seconds_count"
        assert value(found, hist, method=get, code="NOT_FOUND") == 1
        assert value(found, "sessiond_rpc_duration_seconds_sum", method=create, code="OK") > 0
        # Payload bytes.
        pb = "sessiond_payload_bytes_total"
        assert value(found, pb, direction="in", kind="transcript") == sum(
            len(e.encode()) for e in entries
        )
        assert value(found, pb, direction="in", kind="pack") == packed
        assert value(found, pb, direction="out", kind="chunks") > 0
        # Dedup: 250 new bytes of 1000.
        assert value(found, "sessiond_snapshot_bytes_total") == 1000
        assert value(found, "sessiond_snapshot_new_bytes_total") == 250
        assert value(found, "sessiond_snapshot_new_bytes_ratio_count") == 1
        assert value(found, "sessiond_snapshot_new_bytes_ratio_sum") == pytest.approx(0.25)
        assert value(found, "sessiond_active_sandboxes") == 0
        # No ids, tenants or content in any label.
        for _, labels in found:
            for _, label_value in labels:
                for private in (tenant_id, created.session_id, "u1", token):
                    assert private not in label_value


async def test_two_servers_keep_separate_metrics(tmp_path: Path) -> None:
    async with (
        run_server(
            tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", metrics_listen="127.0.0.1:0"
        ) as a,
        run_server(
            tmp_path / "b", f"sqlite:///{tmp_path / 'b.db'}", metrics_listen="127.0.0.1:0"
        ) as b,
    ):
        client = await a.client()
        for _ in range(3):
            await client.list_sessions()
        method = "sessiond.v1.SessionService/ListSessions"
        assert value(await http_samples(a), "sessiond_rpcs_total", method=method, code="OK") == 3
        assert value(await http_samples(b), "sessiond_rpcs_total", method=method, code="OK") == 0


async def test_lease_conflicts_are_counted(sessiond_server: RunningServer) -> None:
    server = sessiond_server.server
    tenant_id, token = await sessiond_server.new_tenant()
    client = await sessiond_server.client(token)
    session = await client.create_session()
    other = LeaseManager(server.stores.meta, "r-other", ttl=30, wait_timeout=0.3)
    other.on_conflict = server.metrics.lease_conflict
    async with server.leases.hold(tenant_id, session.session_id):
        with pytest.raises(Aborted, match="busy"):
            async with other.hold(tenant_id, session.session_id):
                pass
    text = server.metrics.render().decode()
    found = samples(text)
    assert value(found, "sessiond_lease_conflicts_total", reason="wait") == 1
    assert value(found, "sessiond_lease_conflicts_total", reason="busy") == 1


async def test_hydrate_and_snapshot_are_timed(sessiond_server: RunningServer) -> None:
    # A managed (local) sandbox: Resume hydrates it, Suspend snapshots it
    # through the real hydrator, whose CommitSnapshot feeds the dedup stats.
    server = sessiond_server.server
    client = await sessiond_server.client()
    session = await client.create_session()
    live = await client.resume(session.session_id)
    await server.provider.put_file(
        live.sandbox_id, f"{live.sandbox_cwd}/notes.txt", os.urandom(20_000)
    )
    found = samples(server.metrics.render().decode())
    assert value(found, "sessiond_hydrate_duration_seconds_count", outcome="ok") == 1
    assert value(found, "sessiond_active_sandboxes") == 1
    suspended = await client.suspend(session.session_id)
    assert suspended.snapshot.snapshot_id
    found = samples(server.metrics.render().decode())
    count = "sessiond_snapshot_duration_seconds_count"
    assert value(found, count, trigger="manual", outcome="ok") == 1
    # A first snapshot: everything is new.
    assert value(found, "sessiond_snapshot_new_bytes_ratio_count") == 1
    assert value(found, "sessiond_snapshot_new_bytes_ratio_sum") == pytest.approx(1.0)
    assert value(found, "sessiond_active_sandboxes") == 0


async def test_failed_snapshot_is_timed_as_an_error(sessiond_server: RunningServer) -> None:
    server = sessiond_server.server
    tenant_id, token = await sessiond_server.new_tenant()
    session = await (await sessiond_server.client(token)).create_session()
    async with server.leases.hold(tenant_id, session.session_id) as lease:
        with pytest.raises(Exception, match="no sandbox"):
            await server.lifecycle.snapshot(lease, trigger="idle")
    found = samples(server.metrics.render().decode())
    count = "sessiond_snapshot_duration_seconds_count"
    assert value(found, count, trigger="idle", outcome="error") == 1


# -- logs ------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every record of every logger, DEBUG and up, as JSON lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logformat.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_logs_never_carry_content_or_secrets(
    sessiond_server: RunningServer, json_logs: io.StringIO
) -> None:
    secret = "SECRET-" + os.urandom(8).hex()
    tenant_id, token = await sessiond_server.new_tenant()
    client = await sessiond_server.client(token)
    session = await client.create_session(
        labels={"team": "t"},
        agent_options=common_pb2.AgentOptions(system_prompt=f"you know {secret}"),
    )
    key = transcripts_pb2.SessionKey(project_key="proj", session_id="sdk-1")
    entry = json.dumps({"type": "user", "uuid": "u1", "message": {"content": secret}})
    await client.append_entries(key, [entry])
    await client.append_entries(key, [entry])  # duplicate
    pages = [p async for p in client.load_entries(key)]
    assert secret in pages[0][0]
    summaries = await client.list_session_summaries("proj")
    assert summaries
    with pytest.raises(Exception, match="not valid JSON"):
        await client.append_entries(key, [f"{{{secret}"])
    await client.get_session(session.session_id)
    await client.delete_session(session.session_id)
    # A bad credential that embeds the secret.
    async with AsyncClient(sessiond_server.target, token=f"ssd_{secret}") as bad:
        with pytest.raises(Exception, match="malformed"):
            await bad.list_sessions()

    text = json_logs.getvalue()
    assert secret not in text
    assert token not in text and token.rsplit("_", 1)[-1] not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    rpcs = [ln for ln in lines if ln["logger"] == "sessiond.server.interceptors"]
    appends = [ln for ln in rpcs if ln.get("method", "").endswith("/Append")]
    assert len(appends) == 3
    first = appends[0]
    assert {"ts", "level", "logger", "msg", "method", "code", "tenant", "duration_ms"} <= set(first)
    assert (first["code"], first["tenant"], first["entries"]) == ("OK", tenant_id, 1)
    assert appends[1]["duplicates"] == 1 and appends[2]["code"] == "INVALID_ARGUMENT"


def test_text_and_json_formats() -> None:
    record = logging.LogRecord("x.y", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.rpc = {"method": "/a/B", "code": "OK", "msg": "must not clobber"}
    line = json.loads(logformat.JsonFormatter().format(record))
    assert line["msg"] == "hello world" and line["method"] == "/a/B"
    assert line["logger"] == "x.y" and line["level"] == "INFO" and line["ts"].endswith("+00:00")
    with pytest.raises(ValueError):
        logformat.configure("INFO", "xml", io.StringIO())


def test_serve_json_logs_and_metrics_flags(tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    metrics_port = free_port()
    env = clean_env(SESSIOND_LOG_FORMAT="json", SESSIOND_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    proc = spawn_server(["--listen", target], cwd=tmp_path, env=env)
    try:
        wait_serving(target, proc)

        def scraped() -> str:
            text = scrape(metrics_port)
            assert "sessiond_rpcs_total" in text
            return text

        async def check() -> str:
            return await asyncio.to_thread(scraped)

        asyncio.run(assert_eventually(check))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None
    lines = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line]
    assert any("sessiond ready" in ln["msg"] for ln in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(ln) for ln in lines)
