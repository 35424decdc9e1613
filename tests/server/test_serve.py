"""`sessiond serve` as a user runs it: the embedded default, SIGTERM, and the
startup errors a misconfiguration gets."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.services import free_port
from tests.helpers import clean_env, health_status, sessiond_cmd, spawn_server, wait_serving


def test_embedded_default_serves_health_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = spawn_server(["--listen", target], cwd=tmp_path)
    try:
        wait_serving(target, proc)
        # The embedded default keeps its state in ./.sessiond: SQLite + a blob dir.
        assert (tmp_path / ".sessiond" / "metadata.db").is_file()
        assert (tmp_path / ".sessiond" / "blobs").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert health_status(target, timeout=0.5).startswith("error:")


def test_data_dir_from_environment(tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    data = tmp_path / "state"
    proc = spawn_server(
        ["--listen", target], cwd=tmp_path, env=clean_env(SESSIOND_DATA_DIR=str(data))
    )
    try:
        wait_serving(target, proc)
        assert (data / "metadata.db").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _fails(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        sessiond_cmd("serve", "--listen", f"127.0.0.1:{free_port()}", *args),
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    ("args", "status", "names"),
    [
        (["--blob-url", "s3://"], 2, "--blob-url"),
        (["--blob-url", "s3://Bad_Bucket!/x"], 2, "--blob-url"),
        (["--blob-url", "ftp://example/x"], 2, "--blob-url"),
        (["--database-url", "mysql://root@127.0.0.1/x"], 2, "--database-url"),
        (["--database-url", "postgresql://u:hunter2@127.0.0.1:1/db"], 1, "--database-url"),
        (["--listen", "0.0.0.0:9"], 2, "--listen"),
        (["--listen", "nonsense"], 2, "--listen"),
    ],
)
def test_startup_errors_are_one_line_and_name_the_flag(
    tmp_path: Path, args: list[str], status: int, names: str
) -> None:
    code, stderr = _fails(tmp_path, *args)
    assert code == status, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("sessiond: error:")]
    assert len(lines) == 1, stderr
    assert names in lines[0]
    assert "Traceback" not in stderr
    assert "hunter2" not in stderr


async def test_sigterm_drains_an_in_flight_stream(tmp_path: Path) -> None:
    """A Load stream in progress when SIGTERM arrives completes; then exit 0."""
    import asyncio
    import json

    from sessiond.api.v1 import transcripts_pb2
    from sessiond.client import AsyncClient

    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = spawn_server(["--listen", target, "--drain-seconds", "30"], cwd=tmp_path)
    try:
        await asyncio.to_thread(wait_serving, target, proc)
        key = transcripts_pb2.SessionKey(project_key="p", session_id="s")
        blob = "x" * 100_000
        async with AsyncClient(target) as client:
            for batch in range(8):
                await client.append_entries(
                    key,
                    [json.dumps({"uuid": f"{batch}-{i}", "pad": blob}) for i in range(50)],
                )
            received = 0
            pages = client.load_entries(key)
            async for page in pages:
                if received == 0:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(1.0)  # the server is draining meanwhile
                received += len(page)
            assert received == 400
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
