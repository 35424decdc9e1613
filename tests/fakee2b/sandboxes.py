"""The fake's sandboxes: a directory tree and the processes running in it.

A :class:`FakeSandbox` lives on the fake's event loop. Its ``fs`` directory is
the sandbox's ``/`` (``/home/user`` and ``/tmp`` exist from the start, like a
template's). Killing it (DELETE, timeout) first cuts every open envd stream,
as a VM going away would, then SIGKILLs every process carrying the sandbox's
marker in its environment — children and orphans included — and removes the
tree. Pausing stops (SIGSTOP) the processes and cuts the streams; resuming
continues them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_pb

from tests.fakee2b import paths
from tests.fakee2b.processes import MARKER, MOUNTED, NS_SCRIPT, FakeProcess, Isolation

CLIENT_ID = "fake-e2b-client"
# What the fake reports as its envd: new enough for every SDK feature used.
ENVD_VERSION = "0.6.9"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(eq=False)
class FakeSandbox:
    sandbox_id: str
    template_id: str
    access_token: str
    root: Path
    env_vars: dict[str, str]
    metadata: dict[str, str]
    timeout: int
    isolation: Isolation
    namespace_prefix: list[str] = field(default_factory=list)
    started_at: dt.datetime = field(default_factory=now)
    end_at: dt.datetime = field(default_factory=now)
    state: str = "running"
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    # Set while the sandbox is not reachable (killed or paused): open streams end.
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    _watchers: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.end_at = self.started_at + dt.timedelta(seconds=self.timeout)
        for top in ("home/user", "tmp"):
            (self.fs / top).mkdir(parents=True, exist_ok=True)

    @property
    def fs(self) -> Path:
        return self.root / "fs"

    def host(self, path: str, *, follow_final: bool = True) -> Path:
        """The host path of a sandbox path (see :mod:`tests.fakee2b.paths`)."""
        return paths.resolve(self.fs, paths.absolute(path), follow_final=follow_final)

    def set_timeout(self, seconds: int) -> None:
        self.end_at = now() + dt.timedelta(seconds=seconds)

    def extend(self, seconds: int) -> None:
        self.end_at = max(self.end_at, now() + dt.timedelta(seconds=seconds))

    def _translate(self, value: str) -> str:
        if any(value == p or value.startswith(p + "/") for p in MOUNTED):
            return str(self.host(value))
        return value

    async def start(
        self, request: process_pb.StartRequest, *, timeout: float | None
    ) -> FakeProcess:
        """Start a command the way envd does (see :mod:`processes`)."""
        config = request.process or process_pb.ProcessConfig()
        cwd = paths.absolute(config.cwd if config.has_field("cwd") else paths.SANDBOX_HOME)
        host_cwd = self.host(cwd)
        if not host_cwd.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd}' does not exist")
        env: dict[str, str] = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": paths.SANDBOX_HOME,
            "USER": paths.SANDBOX_USER,
            "LOGNAME": paths.SANDBOX_USER,
            **self.env_vars,
            **dict(config.envs),
        }
        argv = [config.cmd, *config.args]
        if self.isolation is Isolation.NAMESPACE:
            home, tmp = self.host("/home"), self.host("/tmp")
            argv = [*self.namespace_prefix, "/bin/sh", "-c", NS_SCRIPT, "fake-e2b"]
            argv += [str(home), str(tmp), cwd, config.cmd, *config.args]
            spawn_cwd = self.fs
        else:
            env = {k: self._translate(v) for k, v in env.items()}
            env.setdefault("TMPDIR", str(self.host("/tmp")))
            spawn_cwd = host_cwd
        env[MARKER] = self.sandbox_id
        stdin = (not request.has_field("stdin")) or request.stdin
        proc = await FakeProcess.spawn(
            config=config,
            argv=argv,
            env=env,
            host_cwd=spawn_cwd,
            stdin=stdin,
            tag=request.tag if request.has_field("tag") else None,
            timeout=timeout,
        )
        self.processes[proc.pid] = proc
        watcher = asyncio.get_running_loop().create_task(self._forget(proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return proc

    async def _forget(self, proc: FakeProcess) -> None:
        await proc.finished.wait()
        self.processes.pop(proc.pid, None)

    def find(self, selector: process_pb.ProcessSelector | None) -> FakeProcess:
        """The running process a selector names; NOT_FOUND like envd."""
        if selector is not None and selector.selector is not None:
            kind, value = selector.selector.field, selector.selector.value
            for proc in self.processes.values():
                if (kind == "pid" and proc.pid == value) or (kind == "tag" and proc.tag == value):
                    return proc
        raise ConnectError(Code.NOT_FOUND, "process not found")

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process of this sandbox; how many got it."""
        hit = 0
        for pid in marked_pids(self.sandbox_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                hit += 1
        return hit

    async def kill(self) -> None:
        """Tear the sandbox down: cut streams, kill every process, delete files."""
        self.state = "killed"
        self.cut.set()
        for _ in range(50):
            self.signal_all(signal.SIGCONT)
            if not self.signal_all(signal.SIGKILL):
                break
            await asyncio.sleep(0.02)
        await asyncio.to_thread(shutil.rmtree, self.root, True)

    def pause(self) -> None:
        self.state = "paused"
        self.cut.set()
        self.signal_all(signal.SIGSTOP)

    def resume(self, timeout: int | None) -> None:
        self.signal_all(signal.SIGCONT)
        self.state = "running"
        self.cut = asyncio.Event()
        if timeout:
            self.set_timeout(timeout)

    def listed(self) -> dict[str, object]:
        """The control API's ListedSandbox / SandboxDetail JSON."""
        return {
            "templateID": self.template_id,
            "sandboxID": self.sandbox_id,
            "clientID": CLIENT_ID,
            "startedAt": self.started_at.isoformat(),
            "endAt": self.end_at.isoformat(),
            "envdVersion": ENVD_VERSION,
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 1024,
            "state": self.state,
            "metadata": self.metadata,
            "envdAccessToken": self.access_token,
            "domain": None,
        }

    def created(self) -> dict[str, object]:
        """The control API's Sandbox JSON (create / connect answers)."""
        return {
            "templateID": self.template_id,
            "sandboxID": self.sandbox_id,
            "clientID": CLIENT_ID,
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": self.access_token,
            "trafficAccessToken": None,
            "domain": None,
        }


def marked_pids(sandbox_id: str) -> list[int]:
    """Pids whose environment carries this sandbox's marker."""
    needle = f"{MARKER}={sandbox_id}".encode()
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found
