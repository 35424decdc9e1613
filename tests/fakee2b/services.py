"""The fake envd's Connect services, on the server classes the e2b wheel ships.

``ProcessService`` and ``FilesystemService`` subclass the generated
``process_connect.Process`` / ``filesystem_connect.Filesystem`` protocols, so
every method exists; the ones the fake does not implement (``Update`` for
PTYs, the watchers) keep the generated ``UNIMPLEMENTED`` answer. They are
served by the wheel's ``ProcessASGIApplication``/``FilesystemASGIApplication``
(Connect protocol, JSON codec, server streams enveloped). The sandbox is the
one the ``E2b-Sandbox-Id`` header names; :class:`tests.fakee2b.envd.Envd`
has already checked it exists and that ``X-Access-Token`` is its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import grp
import os
import posixpath
import pwd
import shutil
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_connect, filesystem_pb
from e2b.envd.process import process_connect, process_pb
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from tests.fakee2b import paths
from tests.fakee2b.processes import Event, FakeProcess
from tests.fakee2b.sandboxes import FakeSandbox

if TYPE_CHECKING:
    from tests.fakee2b.server import FakeE2B

KEEPALIVE_HEADER = "keepalive-ping-interval"


def _sandbox(fake: FakeE2B, ctx: Any) -> FakeSandbox:
    sandbox_id = ctx.request_headers.get("e2b-sandbox-id", "")
    sandbox = fake.sandbox(sandbox_id)
    if sandbox is None or sandbox.state != "running":
        raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
    return sandbox


def _oneof(field: str, value: object) -> Any:
    """A oneof value (typed loosely: the generated stubs want literal names)."""
    return Oneof(field, value)


def _process_event(event: Event) -> process_pb.ProcessEvent:
    if event[0] == "data":
        data = process_pb.ProcessEvent.DataEvent(output=_oneof(event[1], event[2]))
        return process_pb.ProcessEvent(event=_oneof("data", data))
    return process_pb.ProcessEvent(event=_oneof("end", event[1]))


async def _relay(
    sandbox: FakeSandbox, proc: FakeProcess, queue: asyncio.Queue[Event], ctx: Any
) -> AsyncIterator[process_pb.ProcessEvent]:
    """A process's events for one stream: keepalives while idle (at the
    interval the client asked for), and an UNAVAILABLE end if the sandbox goes
    away mid-stream, as a dying VM would cut it."""
    interval = float(ctx.request_headers.get(KEEPALIVE_HEADER, "0") or 0) or None
    cut = sandbox.cut
    cut_wait = asyncio.ensure_future(cut.wait())
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {get, cut_wait}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            if cut.is_set():
                get.cancel()
                raise ConnectError(
                    Code.UNAVAILABLE,
                    f"the connection to sandbox {sandbox.sandbox_id} ended"
                    " before the stream completed",
                )
            if get not in done:
                get.cancel()
                keepalive = process_pb.ProcessEvent.KeepAlive()
                yield process_pb.ProcessEvent(event=_oneof("keepalive", keepalive))
                continue
            event = get.result()
            yield _process_event(event)
            if event[0] == "end":
                return
    finally:
        cut_wait.cancel()
        proc.unsubscribe(queue)


def _start_event(pid: int) -> process_pb.ProcessEvent:
    start = process_pb.ProcessEvent.StartEvent(pid=pid)
    return process_pb.ProcessEvent(event=_oneof("start", start))


class ProcessService(process_connect.Process):
    def __init__(self, fake: FakeE2B) -> None:
        self._fake = fake

    async def list(self, request: process_pb.ListRequest, ctx: Any, /) -> process_pb.ListResponse:
        sandbox = _sandbox(self._fake, ctx)
        return process_pb.ListResponse(
            processes=[
                process_pb.ProcessInfo(config=p.config, pid=p.pid, tag=p.tag)
                for p in sandbox.processes.values()
            ]
        )

    async def start(
        self, request: process_pb.StartRequest, ctx: Any, /
    ) -> AsyncIterator[process_pb.StartResponse]:
        sandbox = _sandbox(self._fake, ctx)
        timeout_ms = ctx.timeout_ms
        proc = await sandbox.start(request, timeout=timeout_ms / 1000 if timeout_ms else None)
        queue = proc.initial
        yield process_pb.StartResponse(event=_start_event(proc.pid))
        async for event in _relay(sandbox, proc, queue, ctx):
            yield process_pb.StartResponse(event=event)

    async def connect(
        self, request: process_pb.ConnectRequest, ctx: Any, /
    ) -> AsyncIterator[process_pb.ConnectResponse]:
        sandbox = _sandbox(self._fake, ctx)
        proc = sandbox.find(request.process)
        queue = proc.subscribe()
        yield process_pb.ConnectResponse(event=_start_event(proc.pid))
        async for event in _relay(sandbox, proc, queue, ctx):
            yield process_pb.ConnectResponse(event=event)

    async def send_input(
        self, request: process_pb.SendInputRequest, ctx: Any, /
    ) -> process_pb.SendInputResponse:
        proc = _sandbox(self._fake, ctx).find(request.process)
        _write_input(proc, request.input)
        return process_pb.SendInputResponse()

    async def stream_input(
        self, request: AsyncIterator[process_pb.StreamInputRequest], ctx: Any, /
    ) -> process_pb.StreamInputResponse:
        sandbox = _sandbox(self._fake, ctx)
        proc: FakeProcess | None = None
        async for message in request:
            value = message.event.value if message.event is not None else None
            if isinstance(value, process_pb.StreamInputRequest.StartEvent):
                proc = sandbox.find(value.process)
            elif isinstance(value, process_pb.StreamInputRequest.DataEvent):
                if proc is None:
                    raise ConnectError(Code.FAILED_PRECONDITION, "no start event")
                _write_input(proc, value.input)
        return process_pb.StreamInputResponse()

    async def close_stdin(
        self, request: process_pb.CloseStdinRequest, ctx: Any, /
    ) -> process_pb.CloseStdinResponse:
        _sandbox(self._fake, ctx).find(request.process).close_stdin()
        return process_pb.CloseStdinResponse()

    async def send_signal(
        self, request: process_pb.SendSignalRequest, ctx: Any, /
    ) -> process_pb.SendSignalResponse:
        proc = _sandbox(self._fake, ctx).find(request.process)
        if request.signal == process_pb.Signal.SIGKILL:
            proc.signal(signal.SIGKILL)
        elif request.signal == process_pb.Signal.SIGTERM:
            proc.signal(signal.SIGTERM)
        else:
            raise ConnectError(Code.UNIMPLEMENTED, f"invalid signal: {request.signal}")
        return process_pb.SendSignalResponse()


def _write_input(proc: FakeProcess, data: process_pb.ProcessInput | None) -> None:
    match data.input if data is not None else None:
        case Oneof(field="stdin", value=chunk):
            proc.write_stdin(chunk)
        case Oneof(field="pty"):
            raise ConnectError(Code.INTERNAL, "error writing to tty: tty not assigned to process")
        case _:
            raise ConnectError(Code.UNIMPLEMENTED, "invalid input type")


def go_permissions(mode: int) -> str:
    """Go's ``FileMode.String()`` for the common types (``drwxr-xr-x``)."""
    kind = "d" if stat.S_ISDIR(mode) else "L" if stat.S_ISLNK(mode) else "-"
    bits = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return kind + bits


def entry_info(sandbox: FakeSandbox, sandbox_path: str) -> filesystem_pb.EntryInfo:
    """EntryInfo of a sandbox path (the entry itself for a symlink, with the
    type of its target, like newer envd); NOT_FOUND when missing."""
    path = paths.absolute(sandbox_path)
    host = sandbox.host(path, follow_final=False)
    try:
        lst = host.lstat()
    except FileNotFoundError as exc:
        raise ConnectError(Code.NOT_FOUND, f"file not found: {path}") from exc
    is_link = stat.S_ISLNK(lst.st_mode)
    target_st = lst
    target: str | None = None
    if is_link:
        resolved = sandbox.host(path)
        target = paths.to_sandbox(sandbox.fs, resolved)
        with contextlib.suppress(OSError):
            target_st = resolved.stat()
    if stat.S_ISDIR(target_st.st_mode):
        ftype = filesystem_pb.FileType.DIRECTORY
    elif stat.S_ISREG(target_st.st_mode):
        ftype = filesystem_pb.FileType.FILE
    else:  # envd reports devices, FIFOs, sockets as unspecified
        ftype = filesystem_pb.FileType.UNSPECIFIED
    return filesystem_pb.EntryInfo(
        name=Path(path).name or "/",
        type=ftype,
        path=path,
        size=target_st.st_size,
        mode=stat.S_IMODE(target_st.st_mode) & 0o777,
        permissions=go_permissions(target_st.st_mode),
        owner=_user_name(lst.st_uid),
        group=_group_name(lst.st_gid),
        modified_time=Timestamp.from_datetime(dt.datetime.fromtimestamp(lst.st_mtime, dt.UTC)),
        symlink_target=target,
        is_symlink=is_link,
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class FilesystemService(filesystem_connect.Filesystem):
    def __init__(self, fake: FakeE2B) -> None:
        self._fake = fake

    async def stat(
        self, request: filesystem_pb.StatRequest, ctx: Any, /
    ) -> filesystem_pb.StatResponse:
        sandbox = _sandbox(self._fake, ctx)
        return filesystem_pb.StatResponse(entry=entry_info(sandbox, request.path))

    async def make_dir(
        self, request: filesystem_pb.MakeDirRequest, ctx: Any, /
    ) -> filesystem_pb.MakeDirResponse:
        sandbox = _sandbox(self._fake, ctx)
        path = paths.absolute(request.path)
        host = sandbox.host(path)
        if host.is_dir():
            raise ConnectError(Code.ALREADY_EXISTS, f"directory already exists: {path}")
        if host.exists():
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"path already exists but it is not a directory: {path}"
            )
        host.mkdir(parents=True)
        entry = filesystem_pb.EntryInfo(
            name=Path(path).name, type=filesystem_pb.FileType.DIRECTORY, path=path
        )
        return filesystem_pb.MakeDirResponse(entry=entry)

    async def list_dir(
        self, request: filesystem_pb.ListDirRequest, ctx: Any, /
    ) -> filesystem_pb.ListDirResponse:
        sandbox = _sandbox(self._fake, ctx)
        path = paths.absolute(request.path)
        host = sandbox.host(path)
        if not host.exists():
            raise ConnectError(Code.NOT_FOUND, f"directory not found: {path}")
        if not host.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"path is not a directory: {path}")
        depth = request.depth or 1
        entries = []
        for dirpath, dirnames, filenames in os.walk(host):
            rel = Path(dirpath).relative_to(host).parts
            if len(rel) + 1 > depth:
                dirnames.clear()
                continue
            for name in sorted(dirnames + filenames):
                entries.append(entry_info(sandbox, posixpath.join(path, *rel, name)))
        return filesystem_pb.ListDirResponse(entries=entries)

    async def remove(
        self, request: filesystem_pb.RemoveRequest, ctx: Any, /
    ) -> filesystem_pb.RemoveResponse:
        sandbox = _sandbox(self._fake, ctx)
        host = sandbox.host(request.path, follow_final=False)
        if host.is_dir() and not host.is_symlink():
            await asyncio.to_thread(shutil.rmtree, host)
        else:
            host.unlink(missing_ok=True)
        return filesystem_pb.RemoveResponse()

    async def move(
        self, request: filesystem_pb.MoveRequest, ctx: Any, /
    ) -> filesystem_pb.MoveResponse:
        sandbox = _sandbox(self._fake, ctx)
        source = sandbox.host(request.source, follow_final=False)
        if not source.exists() and not source.is_symlink():
            raise ConnectError(Code.NOT_FOUND, f"source file not found: {request.source}")
        destination = sandbox.host(request.destination, follow_final=False)
        destination.parent.mkdir(parents=True, exist_ok=True)
        source.rename(destination)
        return filesystem_pb.MoveResponse(entry=entry_info(sandbox, request.destination))
