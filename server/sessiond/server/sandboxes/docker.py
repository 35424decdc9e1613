"""Docker sandboxes: one container per sandbox, from the Dockerfile's
``sandbox`` target (``docker build --target sandbox -t sessiond-sandbox .``).

Everything about a sandbox lives in the Docker engine (the container's name
is the sandbox id, its labels say it is a sessiond sandbox and for which
session, its environment holds the sandbox env), so any replica that talks to
the same engine can use a sandbox another one created.

The Docker SDK is synchronous: every call runs in a worker thread, only here.
Its errors are translated at this edge: ``docker.errors.NotFound`` →
``NotFound``; any other API, connection or SDK error → ``Unavailable``.

Decisions:

* **stdin**: an exec attached to stdin needs the hijacked socket API and a
  half-close (``shutdown(SHUT_WR)``) that not every transport (TLS, ssh)
  supports, plus hand-demultiplexing the output. Since the protocol's stdin is
  a complete ``bytes`` value anyway, it is uploaded with ``put_archive`` to a
  file under ``/tmp`` and the command runs as
  ``sh -c '[ -r "$0" ] || exit 126; exec "$@" <"$0"' FILE ARGV...`` (the argv is
  passed through untouched, never interpreted by the shell); the file is
  removed when the command has finished. The image needs ``/bin/sh``.
* **kill**: Docker has no API to signal an exec. Every exec carries a marker
  variable (``SESSIOND_EXEC_ID=<random>``); ``kill`` runs a root exec that
  SIGKILLs every process whose environment carries it (children inherit it,
  so the whole tree goes, even what left the process group); ``kill_all``
  does the same for any ``SESSIOND_EXEC_ID``, sparing the container's init
  and ``sleep``. A process that clears its environment escapes both (not
  ``destroy``). Needs ``tr`` and ``grep`` in the image.
* **file ownership**: ``put_archive`` always creates files as root. So
  ``put_file`` creates the parents with ``mkdir -p`` as the container's user,
  uploads, then ``chown -h``s the file to that user in a root exec: the agent
  can modify what it is given. (``copyUIDGID`` would look the user up on the
  *host*, where "agent" does not exist.)
* **output**: the engine closes an exec's streams at most ~2 s after the
  command exits even if descendants hold them; exit codes come from
  ``exec_inspect`` (a killed command reports 128 + signal, like local).

Every container gets ``init=True`` (an init reaps zombies), ``sleep
infinity`` as its command, ``/workspace`` as its working directory,
``no-new-privileges``, ``host.docker.internal`` mapped to the host gateway
(so the sandbox can reach a server on the host) and the configured memory,
CPU and pids limits. ``SandboxSpec.timeout_seconds`` is ignored: the server
destroys idle sandboxes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import posixpath
import re
import secrets
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

from sessiond.client.errors import InvalidArgument, NotFound, SessiondError, Unavailable
from sessiond.server.sandboxes.provider import ExecEvent, SandboxInfo, SandboxSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

WORKDIR = "/workspace"
CONFIG_DIR = "/home/agent/.claude"
TMP_DIR = "/home/agent/.tmp"
LABEL_SANDBOX = "sessiond.sandbox"
LABEL_SESSION = "sessiond.session"
MARK_EXEC = "SESSIOND_EXEC_ID"
_ID_RE = re.compile(r"sbx-[0-9a-f]{24}\Z")
_ENV_NAME_RE = re.compile(r"[^=\0]+\Z")
_QUEUE_DEPTH = 64
_MAX_SYMLINK_HOPS = 40
# A failed redirection on `exec` would end sh with 2 before any `||`: test first.
_STDIN_WRAPPER = '[ -r "$0" ] || exit 126; exec "$@" <"$0"'
# SIGKILL every process with an environment line matching the regex $1.
# Two passes: a process forked while the first pass ran is caught by the second.
_KILL_SCRIPT = """
for pass in 1 2; do
  for d in /proc/[0-9]*; do
    if tr '\\0' '\\n' < "$d/environ" 2>/dev/null | grep -qx -- "$1"; then
      kill -9 "${d#/proc/}" 2>/dev/null
    fi
  done
done
exit 0
"""


def _translate(exc: BaseException, what: str) -> SessiondError:
    """The sessiond error for a Docker SDK (or transport) failure."""
    import docker.errors

    if isinstance(exc, SessiondError):
        return exc
    if isinstance(exc, docker.errors.NotFound):
        return NotFound(f"{what}: not found")
    if isinstance(exc, docker.errors.APIError):
        detail = getattr(exc, "explanation", None) or str(exc)
        return Unavailable(f"{what}: docker engine error ({exc.status_code}): {detail}")
    return Unavailable(f"{what}: docker engine unreachable: {type(exc).__name__}: {exc}")


class DockerSandboxProvider:
    """Sandboxes as containers of ``image`` on the engine ``client`` talks
    to (default: ``docker.from_env()``, created on first use).

    ``network``: the network containers join (default bridge).
    ``server_address``: how a sandbox reaches the server (reported in
    :class:`SandboxInfo`), e.g. ``host.docker.internal:50051``.
    ``mem_limit`` (bytes or "4g"), ``nano_cpus`` (1e9 = one CPU),
    ``pids_limit``: per container; ``None`` = the engine's default.
    """

    name = "docker"

    def __init__(
        self,
        image: str = "sessiond-sandbox",
        *,
        client: Any = None,
        network: str | None = None,
        server_address: str = "",
        mem_limit: int | str | None = None,
        nano_cpus: int | None = None,
        pids_limit: int | None = None,
    ) -> None:
        if not image:
            raise InvalidArgument("docker provider: image must not be empty")
        self.image = image
        self._client = client
        self._owns_client = client is None
        self._client_lock = threading.Lock()
        self._network = network
        self._server_address = server_address
        self._limits: dict[str, Any] = {
            k: v
            for k, v in (
                ("mem_limit", mem_limit),
                ("nano_cpus", nano_cpus),
                ("pids_limit", pids_limit),
            )
            if v is not None
        }

    # -- plumbing ------------------------------------------------------------

    def _docker(self) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    import docker
                except ImportError as exc:
                    raise Unavailable(
                        "the docker sandbox provider needs the docker package (sessiond[docker])"
                    ) from exc
                self._client = docker.from_env()
            return self._client

    async def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` in a worker thread, errors translated."""

        def call() -> T:
            try:
                return fn(self._docker())
            except SessiondError:
                raise
            except Exception as exc:
                raise _translate(exc, what) from exc

        return await asyncio.to_thread(call)

    def _container(self, client: Any, sandbox_id: str) -> Any:
        """The sandbox's container; ``NotFound`` for anything that is not a
        sessiond sandbox (so no caller can reach other containers)."""
        if not _ID_RE.match(sandbox_id):
            raise NotFound(f"sandbox {sandbox_id!r} not found")
        container = client.containers.get(sandbox_id)
        if container.labels.get(LABEL_SANDBOX) != "1":
            raise NotFound(f"sandbox {sandbox_id!r} not found")
        return container

    def _info(self, sandbox_id: str, status: str = "running") -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=sandbox_id,
            provider=self.name,
            workdir=WORKDIR,
            config_dir=CONFIG_DIR,
            state="running" if status == "running" else "stopped",
            server_address=self._server_address,
        )

    # -- lifecycle -----------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """A running container with an empty ``/workspace`` and config dir.
        The env is ``spec.env`` plus CLAUDE_CONFIG_DIR, CLAUDE_CODE_TMPDIR and
        TMPDIR (which win). ``Unavailable`` if the image is missing or the
        engine refuses."""
        _check_env(spec.env, "SandboxSpec.env")
        sandbox_id = "sbx-" + secrets.token_hex(12)
        env = {**spec.env, "CLAUDE_CONFIG_DIR": CONFIG_DIR, "CLAUDE_CODE_TMPDIR": TMP_DIR}
        env["TMPDIR"] = TMP_DIR
        kwargs: dict[str, Any] = dict(
            image=spec.image or self.image,
            command=["sleep", "infinity"],
            name=sandbox_id,
            detach=True,
            init=True,
            working_dir=WORKDIR,
            environment=env,
            labels={LABEL_SANDBOX: "1", LABEL_SESSION: spec.session_id},
            extra_hosts={"host.docker.internal": "host-gateway"},
            security_opt=["no-new-privileges:true"],
            **self._limits,
        )
        if self._network:
            kwargs["network"] = self._network
        try:
            await self._call(
                f"create sandbox from {kwargs['image']}", lambda c: c.containers.run(**kwargs)
            )
            code, _, err = await self._run(
                sandbox_id, ["mkdir", "-p", "--", WORKDIR, CONFIG_DIR, TMP_DIR]
            )
            if code != 0:
                detail = err.decode(errors="replace").strip()
                raise Unavailable(f"sandbox {sandbox_id}: cannot create its directories: {detail}")
        except BaseException:
            with contextlib.suppress(SessiondError):
                await self.destroy(sandbox_id)
            raise
        log.info("sandbox created: %s session=%s", sandbox_id, spec.session_id)
        return self._info(sandbox_id)

    async def describe(self, sandbox_id: str) -> SandboxInfo:
        """``NotFound`` once destroyed; state "stopped" if the container is
        not running."""

        def describe(client: Any) -> str:
            return str(self._container(client, sandbox_id).status)

        status = await self._call(f"describe {sandbox_id}", describe)
        return self._info(sandbox_id, status)

    async def destroy(self, sandbox_id: str) -> None:
        """``remove(force=True)``: kills everything and deletes the
        container. Idempotent."""

        def destroy(client: Any) -> None:
            try:
                self._container(client, sandbox_id).remove(force=True, v=True)
            except NotFound:
                return
            except Exception as exc:
                import docker.errors

                if isinstance(exc, docker.errors.NotFound):
                    return
                # 409: a removal is already in progress — someone else destroys it.
                if isinstance(exc, docker.errors.APIError) and exc.status_code == 409:
                    return
                raise

        await self._call(f"destroy {sandbox_id}", destroy)
        log.info("sandbox destroyed: %s", sandbox_id)

    async def kill_all(self, sandbox_id: str) -> None:
        """SIGKILL every process any exec started (see the module
        docstring), keeping the container and its files. ``NotFound`` if
        the sandbox is gone."""

        def kill_all(client: Any) -> None:
            container = self._container(client, sandbox_id)
            _kill_marked(client, container.id, f"{MARK_EXEC}=[0-9a-f]*")

        await self._call(f"kill_all in {sandbox_id}", kill_all)
        log.info("sandbox %s: killed all commands", sandbox_id)

    async def close(self) -> None:
        """Close the client if this provider created it."""
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await asyncio.to_thread(client.close)

    # -- commands ------------------------------------------------------------

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        user: str = "",
    ) -> DockerExecution:
        """``exec_create`` + ``exec_start(stream=True, demux=True)``; see the
        module docstring for stdin and kill. ``user`` ("" = the container's
        user) is for the provider's own maintenance execs."""
        if not argv or any(not isinstance(a, str) or "\0" in a for a in argv):
            raise InvalidArgument("argv must be a non-empty list of strings without NUL")
        _check_env(env or {}, "env")
        workdir = WORKDIR if cwd is None else _check_path(cwd)
        if cwd is not None:
            # The engine would fail the exec with a bare 126: say what is wrong.
            code, _, _ = await self._run(sandbox_id, ["test", "-d", workdir])
            if code != 0:
                raise InvalidArgument(f"cwd {cwd!r} is not a directory in the sandbox")
        marker = secrets.token_hex(8)
        environment = {**(env or {}), MARK_EXEC: marker}
        command = list(argv)
        stdin_path = ""
        if stdin is not None:
            stdin_path = f"/tmp/.sessiond-stdin-{marker}"
            archive = _tar_one(posixpath.basename(stdin_path), bytes(stdin), 0o444)
            await self._call(
                f"exec in {sandbox_id}",
                lambda c: c.api.put_archive(self._container(c, sandbox_id).id, "/tmp", archive),
            )
            command = ["sh", "-c", _STDIN_WRAPPER, stdin_path, *argv]

        def start(client: Any) -> tuple[str, str, Any]:
            container = self._container(client, sandbox_id)
            exec_id = client.api.exec_create(
                container.id,
                command,
                stdout=True,
                stderr=True,
                stdin=False,
                tty=False,
                environment=environment,
                workdir=workdir,
                user=user,
            )["Id"]
            stream = client.api.exec_start(exec_id, stream=True, demux=True)
            return container.id, exec_id, stream

        container_id, exec_id, stream = await self._call(f"exec in {sandbox_id}", start)
        return DockerExecution(self, container_id, exec_id, marker, stream, stdin_path)

    async def _run(
        self, sandbox_id: str, argv: Sequence[str], *, user: str = ""
    ) -> tuple[int, bytes, bytes]:
        execution = await self.exec(sandbox_id, argv, user=user)
        out, err = bytearray(), bytearray()
        async for event in execution.events():
            (out if event.stream == "stdout" else err).extend(event.data)
        return await execution.wait(), bytes(out), bytes(err)

    # -- files ---------------------------------------------------------------

    async def put_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``path`` (absolute, no ``..``) owned by the container's
        user, creating parents as that user (``InvalidArgument`` if it may
        not). Symlinks resolve inside the container's own filesystem."""
        path = _check_path(path)
        if not 0 <= mode <= 0o777:
            raise InvalidArgument(f"mode {mode:#o} is not a permission mode (0..0o777)")
        parent, name = posixpath.split(path)
        if not name:
            raise InvalidArgument(f"{path!r} names no file")
        code, out, err = await self._run(
            sandbox_id, ["sh", "-c", 'mkdir -p -- "$1" && id -u && id -g', "sh", parent]
        )
        if code != 0:
            raise InvalidArgument(f"cannot create {parent!r}: {err.decode(errors='replace')}")
        uid, gid = (int(x) for x in out.split()[:2])
        archive = _tar_one(name, bytes(data), mode)
        await self._call(
            f"put_file in {sandbox_id}",
            lambda c: c.api.put_archive(self._container(c, sandbox_id).id, parent, archive),
        )
        if uid != 0:
            code, _, err = await self._run(
                sandbox_id, ["chown", "-h", f"{uid}:{gid}", "--", path], user="0"
            )
            if code != 0:
                raise Unavailable(f"cannot chown {path!r}: {err.decode(errors='replace')}")

    async def get_file(self, sandbox_id: str, path: str) -> bytes:
        """The regular file at ``path`` (symlinks followed inside the
        container). ``NotFound`` if it or the sandbox is missing;
        ``InvalidArgument`` for a directory or special file."""
        current = _check_path(path)

        def fetch(client: Any) -> bytes:
            nonlocal current
            container_id = self._container(client, sandbox_id).id
            for _ in range(_MAX_SYMLINK_HOPS):
                chunks, _ = client.api.get_archive(container_id, current)
                with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                    member = archive.next()
                    if member is None:
                        raise NotFound(f"{path!r} not found")
                    if member.issym():
                        target = member.linkname
                        base = posixpath.dirname(current)
                        current = posixpath.normpath(posixpath.join(base, target))
                        continue
                    if not member.isreg():
                        raise InvalidArgument(f"{path!r} is not a regular file")
                    content = archive.extractfile(member)
                    if content is None:
                        raise InvalidArgument(f"{path!r} is not a regular file")
                    return content.read()
            raise InvalidArgument(f"{path!r}: too many levels of symbolic links")

        return await self._call(f"get_file {path!r} in {sandbox_id}", fetch)


class DockerExecution:
    """An exec in a sandbox container. A worker thread reads the engine's
    demultiplexed stream into a bounded queue (so a slow consumer slows the
    command rather than filling memory). One consumer of :meth:`events`."""

    def __init__(
        self,
        provider: DockerSandboxProvider,
        container_id: str,
        exec_id: str,
        marker: str,
        stream: Any,
        stdin_path: str,
    ) -> None:
        self._provider = provider
        self._container_id = container_id
        self._exec_id = exec_id
        self._marker = marker
        self._stream = stream
        self._stdin_path = stdin_path
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[ExecEvent | None] = asyncio.Queue(_QUEUE_DEPTH)
        self._abandoned = threading.Event()
        self._error: SessiondError | None = None
        self._finished = False
        self._code: int | None = None
        self._reader = asyncio.ensure_future(asyncio.to_thread(self._read))

    def _read(self) -> None:
        """Worker thread: stream → queue, then the end sentinel."""
        try:
            for out, err in self._stream:
                if out and not self._deliver(ExecEvent("stdout", out)):
                    return
                if err and not self._deliver(ExecEvent("stderr", err)):
                    return
        except Exception as exc:
            self._error = _translate(exc, f"exec {self._exec_id}")
        finally:
            with contextlib.suppress(Exception):
                self._stream.close()
            self._deliver(None)

    def _deliver(self, item: ExecEvent | None) -> bool:
        while not self._abandoned.is_set() and self._loop.is_running():
            try:
                future = asyncio.run_coroutine_threadsafe(
                    asyncio.wait_for(self._queue.put(item), 1.0), self._loop
                )
                future.result(timeout=5.0)
                return True
            except TimeoutError:
                continue  # consumer is slow: keep the backpressure, re-check abandonment
            except RuntimeError:
                return False  # the event loop is gone
        return False

    async def events(self) -> AsyncIterator[ExecEvent]:
        """Output in arrival order; ends when the engine closes the stream
        (the command exited). ``Unavailable`` if the engine connection broke."""
        try:
            while not self._finished:
                item = await self._queue.get()
                if item is None:
                    self._finished = True
                    if self._error is not None:
                        raise self._error
                    return
                yield item
        except BaseException:
            if not self._finished:
                self._abandoned.set()
            raise

    async def wait(self) -> int:
        """The exit code from ``exec_inspect`` (128 + N for signal N), polled
        until the engine reports the exec finished; cleans up the stdin file."""
        if self._code is not None:
            return self._code
        delay = 0.05
        while True:
            info = await self._provider._call(
                f"exec {self._exec_id}", lambda c: c.api.exec_inspect(self._exec_id)
            )
            if not info.get("Running") and info.get("ExitCode") is not None:
                break
            await asyncio.wait((self._reader,), timeout=delay)
            delay = min(delay * 2, 0.5)
        self._code = int(info["ExitCode"])
        if self._stdin_path:
            path, self._stdin_path = self._stdin_path, ""
            with contextlib.suppress(SessiondError):
                await self._in_container(["rm", "-f", "--", path])
        return self._code

    async def kill(self) -> None:
        """SIGKILL every process carrying this exec's marker (as root).
        Idempotent; ``Unavailable`` if the engine is unreachable, nothing if
        the sandbox is already gone."""
        pattern = f"{MARK_EXEC}={self._marker}"
        with contextlib.suppress(NotFound):
            await self._provider._call(
                f"kill exec {self._exec_id}",
                lambda c: _kill_marked(c, self._container_id, pattern),
            )

    async def _in_container(self, argv: list[str]) -> None:
        def run(client: Any) -> None:
            exec_id = client.api.exec_create(self._container_id, argv, user="0")["Id"]
            client.api.exec_start(exec_id)

        await self._provider._call(f"exec {self._exec_id}", run)


def _kill_marked(client: Any, container_id: str, pattern: str) -> None:
    """Run the kill script as root in the container and wait for it."""
    argv = ["sh", "-c", _KILL_SCRIPT, "sh", pattern]
    exec_id = client.api.exec_create(container_id, argv, user="0")["Id"]
    client.api.exec_start(exec_id)


def _tar_one(name: str, data: bytes, mode: int) -> bytes:
    """An in-memory tar holding one regular file ``name``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _check_path(path: str) -> str:
    """``path`` normalised; ``InvalidArgument`` unless absolute and free of
    ``..`` components and NUL."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"path {path!r} must be absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"path {path!r} must not contain '..'")
    return "/" + "/".join(parts)


def _check_env(env: Mapping[str, str], what: str) -> None:
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
            raise InvalidArgument(f"{what}: invalid variable name {key!r}")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgument(f"{what}: value of {key} must be a string without NUL")
