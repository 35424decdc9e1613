"""The sessiond-hydrator command, as a real process against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from claude_agent_sdk import project_key_for_directory

from sessiond.api.v1 import common_pb2

from .snapshot_helpers import describe, make_workspace, read_snapshot, workspace_env


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiond.hydrator", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    code, out, err = await run("snapshot", env={"SESSIOND_SERVER": "", "SESSIOND_SESSION": ""})
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "sessiond-hydrator: error: no server: pass --server or set SESSIOND_SERVER"
    ]
    code, _, err = await run("frobnicate")
    assert code == 2 and err.startswith("sessiond-hydrator: error:")


async def test_snapshot_and_restore_round_trip(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        token = env.client.metadata[0][1].removeprefix("Bearer ")
        base = ["--server", env.server.target, "--session", env.session_id, "--progress", "none"]
        code, out, err = await run("snapshot", *base, "--cwd", str(ws), "--exclude", "*.bin",
                                   env={"SESSIOND_TOKEN": token})  # fmt: skip
        assert code == 0, err
        result = json.loads(out)
        assert result["snapshot_id"].startswith("snap_") and result["skipped"] == 0
        assert token not in out + err
        latest = (await env.remote.workspace()).latest_snapshot
        assert latest.snapshot_id == result["snapshot_id"]
        _, root, _ = await read_snapshot(env.remote, latest)
        expected = describe(ws)
        del expected[b"big.bin"]
        assert root == expected

        target = tmp_path / "restored"
        code, out, err = await run("restore", *base, "--cwd", str(target),
                                   "--config-dir", str(tmp_path / "cfg"),
                                   env={"SESSIOND_TOKEN": token})  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["snapshot_id"] == result["snapshot_id"]
        assert json.loads(out)["project_key"] == project_key_for_directory(target)
        assert describe(target) == expected

        # A caller's key for the very path is used as given (the managed
        # server passes one to spare the sandbox an SDK import) ...
        given = "-given-by-the-caller"
        code, out, err = await run("restore", *base, "--cwd", str(tmp_path / "again"),
                                   "--config-dir", str(tmp_path / "cfg2"),
                                   f"--project-key={given}",
                                   env={"SESSIOND_TOKEN": token})  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["project_key"] == given
        # ... but not for a path that resolves elsewhere here.
        (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
        (tmp_path / "real").mkdir()
        code, out, err = await run("restore", *base, "--cwd", str(tmp_path / "link"),
                                   "--config-dir", str(tmp_path / "cfg3"),
                                   f"--project-key={given}",
                                   env={"SESSIOND_TOKEN": token})  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["project_key"] == project_key_for_directory(tmp_path / "real")


async def test_server_errors_exit_1_and_never_print_the_token(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    async with workspace_env(tmp_path) as env:
        secret = "sk-not-a-real-token-0123456789"
        code, out, err = await run("snapshot", "--server", env.server.target, "--session",
                                   env.session_id, "--cwd", str(ws), "--token", secret)  # fmt: skip
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("sessiond-hydrator: error:")
    assert "UNAUTHENTICATED" in err and secret not in err


async def test_watch_exits_0_after_a_final_snapshot_on_sigterm(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        token = env.client.metadata[0][1].removeprefix("Bearer ")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessiond.hydrator", "watch", "--server", env.server.target,
            "--session", env.session_id, "--cwd", str(ws), "--interval", "0.2",
            "--progress", "json",
            env={**os.environ, "SESSIOND_TOKEN": token},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            for _ in range(400):
                ws_info = await env.remote.workspace()
                if ws_info.HasField("latest_snapshot"):
                    break
                await asyncio.sleep(0.05)
            assert ws_info.HasField("latest_snapshot")
            (ws / "last-words.txt").write_text("written just before SIGTERM\n")
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.returncode == 0, err.decode()
        latest = (await env.remote.workspace()).latest_snapshot
        _, root, _ = await read_snapshot(env.remote, latest)
    assert latest.trigger == common_pb2.SNAPSHOT_TRIGGER_SHUTDOWN
    assert root[b"last-words.txt"][2] == b"written just before SIGTERM\n"
    events = [
        json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")
    ]
    assert "done" in events
