"""FakeE2B: the E2B cloud on loopback, for the real, unmodified e2b SDK.

Two uvicorn servers on free 127.0.0.1 ports share one event loop on a daemon
thread: the control API (``api_url``, :mod:`tests.fakee2b.control`) and envd
for every sandbox (``sandbox_url``, :mod:`tests.fakee2b.envd`). Point a client
at them with ``E2B(api_key=fake.api_key, api_url=fake.api_url,
sandbox_url=fake.sandbox_url)``.

Sandboxes are real: a directory per sandbox under ``root`` (its ``/``) and
host subprocesses (see :mod:`tests.fakee2b.processes` for the two isolation
modes). A sandbox is killed on DELETE, when its timeout passes, and when the
fake stops. Every request is recorded (:class:`~tests.fakee2b.asgi.Call`,
never with secrets). Tests reach in with thread-safe helpers: ``calls()``,
``kill()`` (a sandbox dying behind the client's back), ``fail_next()``
(injected HTTP errors), ``host_path()``, ``pids()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import uvicorn

from tests.fakee2b.asgi import App, Call, Recorder
from tests.fakee2b.control import ControlAPI
from tests.fakee2b.envd import Envd
from tests.fakee2b.processes import Isolation, namespace_prefix
from tests.fakee2b.sandboxes import FakeSandbox, marked_pids, now

T = TypeVar("T")
Plane = Literal["api", "envd"]
START_TIMEOUT = 15.0


@dataclass
class _Fault:
    plane: Plane
    status: int
    path_contains: str
    remaining: int


class FakeE2B:
    """A running fake (``start()``/``stop()`` or ``with``). ``isolation`` is
    ``"auto"`` (namespace when possible), ``"namespace"`` or ``"translate"``."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        root: Path | None = None,
        isolation: Literal["auto", "namespace", "translate"] = "auto",
    ) -> None:
        self.api_key = api_key or "e2b_fake_" + secrets.token_hex(16)
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="fakee2b-"))
        prefix = namespace_prefix() if isolation != "translate" else None
        if isolation == "namespace" and prefix is None:
            raise RuntimeError("mount namespaces are not available on this host")
        self.isolation = Isolation.NAMESPACE if prefix else Isolation.TRANSLATE
        self._prefix = prefix or []
        self.recorder = Recorder()
        self._sandboxes: dict[str, FakeSandbox] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self.api_url = ""
        self.sandbox_url = ""

    # -- lifecycle (test thread) --------------------------------------------------

    def start(self) -> FakeE2B:
        sockets = [_listen(), _listen()]
        self.api_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self.sandbox_url = f"http://127.0.0.1:{sockets[1].getsockname()[1]}"
        apps: list[App] = [
            self.recorder.wrap("api", ControlAPI(self)),
            self.recorder.wrap("envd", Envd(self)),
        ]
        self._thread = threading.Thread(
            target=self._run, args=(apps, sockets), name="fake-e2b", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._startup_error is not None:
            self.stop()
            raise RuntimeError(f"fake E2B did not start: {self._startup_error!r}")
        return self

    def stop(self) -> None:
        """Kill every sandbox, stop the servers, delete the root it created."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._kill_all()).result(30)
            stopping = self._stopping
            if stopping is not None:
                loop.call_soon_threadsafe(stopping.set)
            thread.join(30)
        self._loop = self._thread = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FakeE2B:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, apps: list[App], sockets: list[socket.socket]) -> None:
        try:
            asyncio.run(self._main(apps, sockets))
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()

    async def _main(self, apps: list[App], sockets: list[socket.socket]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for app in apps:
            config = uvicorn.Config(
                app,
                lifespan="off",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=2,
                timeout_keep_alive=30,
            )
            self._servers.append(uvicorn.Server(config))
        serving = [
            asyncio.create_task(server.serve(sockets=[sock]))
            for server, sock in zip(self._servers, sockets, strict=True)
        ]
        reaper = asyncio.create_task(self._reap())
        while not all(server.started for server in self._servers):
            if any(task.done() for task in serving):
                raise RuntimeError("a fake E2B server failed to start")
            await asyncio.sleep(0.01)
        self._ready.set()
        await self._stopping.wait()
        reaper.cancel()
        for server in self._servers:
            server.should_exit = True
        await asyncio.gather(*serving, return_exceptions=True)

    def _call(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        assert self._loop is not None, "fake E2B is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- test-side helpers (thread-safe) ------------------------------------------

    def calls(self, plane: Plane | None = None) -> list[Call]:
        return [c for c in self.recorder.calls() if plane is None or c.plane == plane]

    def clear_calls(self) -> None:
        self.recorder.clear()

    def sandbox_ids(self) -> list[str]:
        with self._lock:
            return list(self._sandboxes)

    def kill(self, sandbox_id: str) -> None:
        """Kill a sandbox as if E2B did (not through the API)."""
        self._call(self.kill_sandbox(sandbox_id)).result(30)

    def fail_next(
        self, plane: Plane, status: int, *, path_contains: str = "", times: int = 1
    ) -> None:
        """Answer the next ``times`` authenticated requests to ``plane`` whose
        path contains ``path_contains`` with ``status`` (JSON error body)."""
        with self._lock:
            self._faults.append(_Fault(plane, status, path_contains, times))

    def host_path(self, sandbox_id: str, path: str) -> Path:
        """Where a sandbox path lives on this host (for assertions)."""
        sandbox = self.sandbox(sandbox_id)
        if sandbox is None:
            raise KeyError(sandbox_id)
        return sandbox.host(path)

    def pids(self, sandbox_id: str) -> list[int]:
        """Host pids of every live process of a sandbox."""
        return marked_pids(sandbox_id)

    # -- loop-side state (used by the apps) -----------------------------------------

    def sandbox(self, sandbox_id: str) -> FakeSandbox | None:
        with self._lock:
            return self._sandboxes.get(sandbox_id)

    def sandboxes(self) -> list[FakeSandbox]:
        with self._lock:
            return list(self._sandboxes.values())

    def create_sandbox(
        self, *, template: str, timeout: int, env_vars: dict[str, str], metadata: dict[str, str]
    ) -> FakeSandbox:
        sandbox_id = "i" + secrets.token_hex(10)
        sandbox = FakeSandbox(
            sandbox_id=sandbox_id,
            template_id=template,
            access_token=secrets.token_urlsafe(24),
            root=self.root / sandbox_id,
            env_vars=env_vars,
            metadata=metadata,
            timeout=timeout,
            isolation=self.isolation,
            namespace_prefix=self._prefix,
        )
        with self._lock:
            self._sandboxes[sandbox_id] = sandbox
        return sandbox

    async def kill_sandbox(self, sandbox_id: str) -> bool:
        with self._lock:
            sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return False
        await sandbox.kill()
        return True

    def take_fault(self, plane: Plane, path: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault.plane == plane and fault.path_contains in path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault.status
        return None

    async def _kill_all(self) -> None:
        for sandbox_id in self.sandbox_ids():
            await self.kill_sandbox(sandbox_id)

    async def _reap(self) -> None:
        """Kill sandboxes whose timeout passed, as E2B does."""
        while True:
            await asyncio.sleep(0.25)
            for sandbox in self.sandboxes():
                if sandbox.state == "running" and sandbox.end_at <= now():
                    await self.kill_sandbox(sandbox.sandbox_id)


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock
