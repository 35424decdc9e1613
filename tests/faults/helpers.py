"""Helpers for the fault tests: the hydrator CLI and server replicas as real
processes, workspaces compared byte for byte, snapshots counted, and
``check`` (in-process or through the ``sessiond check`` CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessiond.client import AsyncClient
from sessiond.hydrator.restore import restore
from sessiond.hydrator.snapshot import snapshot
from sessiond.server.core.check import CheckReport, Orphans
from tests.fixtures.server import RunningServer
from tests.gc.helpers import Session, check
from tests.helpers import clean_env, health_status, sessiond_cmd

#: Seconds a hydrator or CLI process may take (the machine is shared: generous).
PROCESS_TIMEOUT = 300.0


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        """The last JSON line of stdout (the command's one-line report)."""
        for line in reversed(self.out.splitlines()):
            if line.startswith("{"):
                value = json.loads(line)
                assert isinstance(value, dict)
                return value
        raise AssertionError(f"no JSON report on stdout: {self.out!r} (stderr: {self.err!r})")


async def run_process(
    cmd: list[str], env: dict[str, str], timeout: float = PROCESS_TIMEOUT
) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@dataclass
class Hydrator:
    """``sessiond-hydrator`` for one session, run as a real process each
    time. The state directory is the default (``<cwd>/.sessiond``), so runs
    against the same ``cwd`` share it, as retries in one sandbox do."""

    server: str
    token: str
    session_id: str
    config_dir: Path

    def command(self, command: str, cwd: Path, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "sessiond.hydrator", command,
            "--server", self.server, "--session", self.session_id,
            "--cwd", str(cwd), "--config-dir", str(self.config_dir),
            "--progress", "none", *args,
        ]  # fmt: skip

    def env(self, fault: str = "") -> dict[str, str]:
        env = clean_env(SESSIOND_TOKEN=self.token)
        if fault:
            env["SESSIOND_FAULT_POINT"] = fault
        return env

    async def run(self, command: str, cwd: Path, *args: str, fault: str = "") -> Result:
        return await run_process(self.command(command, cwd, *args), self.env(fault))

    async def snapshot(self, cwd: Path, *args: str, fault: str = "") -> Result:
        return await self.run("snapshot", cwd, *args, fault=fault)

    async def restore(self, cwd: Path, *args: str) -> Result:
        return await self.run("restore", cwd, *args)


async def snapshot_ids(client: AsyncClient, session_id: str) -> list[str]:
    """The session's committed snapshots, newest first."""
    return [s.snapshot_id for s in (await client.list_snapshots(session_id)).snapshots]


def staging_leftovers(parent: Path) -> list[str]:
    """Entries a restore into a child of ``parent`` may leave behind."""
    return sorted(n for n in os.listdir(parent) if ".sessiond-staging-" in n or "sessiond-old" in n)


# -- check -----------------------------------------------------------------------


def orphan_counts(orphans: Orphans | dict[str, int]) -> dict[str, int]:
    """Orphans as a dict with only the non-zero counts."""
    items = orphans.items() if isinstance(orphans, dict) else vars(orphans).items()
    return {k: int(v) for k, v in items if v}


async def check_clean(server: RunningServer) -> CheckReport:
    """``check --read-data`` in-process on the server's stores: no damage
    (orphans are garbage for GC, counted, and returned for the caller)."""
    report = await check(server, read_data=True)
    assert report.ok, [d.line() for d in report.damage]
    return report


async def run_check_cli(
    database_url: str,
    blob_url: str,
    *,
    master_key: str = "",
    master_key_file: Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """``sessiond check --read-data --json`` on the stores: (exit code, report)."""
    args = ["--master-key-file", str(master_key_file)] if master_key_file else []
    env = clean_env(SESSIOND_MASTER_KEY=master_key) if master_key else clean_env()
    result = await run_process(
        sessiond_cmd(
            "check", "--read-data", "--json", "--database-url", database_url,
            "--blob-url", blob_url, *args,
        ),
        env,
    )  # fmt: skip
    assert result.code in (0, 1), (result.code, result.out, result.err)
    report = json.loads(result.out)
    assert isinstance(report, dict)
    return result.code, report


async def check_cli(
    database_url: str,
    blob_url: str,
    master_key: str = "",
    *,
    master_key_file: Path | None = None,
) -> dict[str, Any]:
    """:func:`run_check_cli`, asserting no damage (exit 0); the report."""
    code, report = await run_check_cli(
        database_url, blob_url, master_key=master_key, master_key_file=master_key_file
    )
    assert code == 0 and report["ok"] and report["damage"] == [], report
    return report


# -- server replicas as processes --------------------------------------------------


@dataclass
class ServerProcess:
    """``sessiond serve`` on a fixed port and data dir, restartable (the same
    port and data) after a crash. Its log goes to ``<data_dir>/server.log``
    (a pipe nobody reads would fill up and block it)."""

    port: int
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: Any = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, **extra_env: str) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        log.write(f"--- start {self.starts} ---\n".encode())
        log.flush()
        self._close_log()
        self._log = log
        self.proc = subprocess.Popen(
            sessiond_cmd(
                "serve", "--listen", self.target, "--data-dir", str(self.data_dir),
            ),
            cwd=self.data_dir,
            env={**self.env, **extra_env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )  # fmt: skip

    def wait_serving(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"server {self.target} exited:\n{self.log_tail()}")
            status = health_status(self.target, timeout=2.0)
            if status == "SERVING":
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.target} not SERVING ({status}):\n{self.log_tail()}")

    async def started(self, **extra_env: str) -> None:
        """Start and wait until SERVING (without blocking the event loop)."""
        self.start(**extra_env)
        await asyncio.to_thread(self.wait_serving)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit (a stopped process gets
        SIGCONT first, or it would never see the SIGTERM)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def api_key(database_url: str, cwd: Path, tenant: str = "acme") -> str:
    """A new tenant and its API key, through ``sessiond admin``."""
    out = subprocess.run(
        sessiond_cmd("admin", "--database-url", database_url, "tenants", "create", tenant),
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
        env=clean_env(),
    ).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("api_key"))


# -- the hydrator in-process (tests.gc.helpers.Session) ---------------------------


def held_epoch(cwd: Path) -> int:
    """The lease epoch the hydrator working in ``cwd`` holds (state.json)."""
    return int(json.loads((cwd / ".sessiond" / "state.json").read_text())["lease_epoch"])


async def restore_beside(session: Session, dest: Path, snapshot_id: str | None = None) -> None:
    """Restore into ``dest`` under the epoch ``session.cwd`` holds: a reader
    that does not take the lease from the sandbox it checks on."""
    await restore(
        session.remote,
        dest,
        snapshot_id=snapshot_id,
        epoch=held_epoch(session.cwd),
        config_dir=dest.parent / f".{dest.name}-config",
    )


async def take(session: Session) -> str:
    """Snapshot ``session.cwd`` in-process; the snapshot id."""
    return str((await snapshot(session.remote, session.cwd)).snapshot_id)
