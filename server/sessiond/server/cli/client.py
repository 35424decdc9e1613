"""Client subcommands of ``sessiond``: talk to a running server over gRPC.

    sessiond run [--session ID] [--json] PROMPT
    sessiond sessions ls [--label K=V …] | show ID | rm ID
    sessiond suspend ID | resume ID
    sessiond fork ID [--at UUID]
    sessiond snapshots ID
    sessiond restore ID (--at UUID | --snapshot SID) [--new]

``--server`` / ``SESSIOND_SERVER`` (default 127.0.0.1:50051) and ``--token`` /
``SESSIOND_TOKEN`` (a tenant API key) select the server. Only the client
library is used here, so these commands work from a bare ``pip install
sessiond``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import json_format

from sessiond.api.v1 import common_pb2, sessions_pb2
from sessiond.client import AsyncClient
from sessiond.client.errors import InvalidArgument, SessiondError

_STATES = {
    common_pb2.SESSION_STATE_NEW: "new",
    common_pb2.SESSION_STATE_ACTIVE: "active",
    common_pb2.SESSION_STATE_SUSPENDING: "suspending",
    common_pb2.SESSION_STATE_SUSPENDED: "suspended",
    common_pb2.SESSION_STATE_HYDRATING: "hydrating",
    common_pb2.SESSION_STATE_DELETED: "deleted",
}

Command = Callable[[AsyncClient, argparse.Namespace], Awaitable[int]]


def add_parsers(sub: Any) -> None:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument(
        "--server",
        default=os.environ.get("SESSIOND_SERVER", "127.0.0.1:50051"),
        help="host:port of the server (env SESSIOND_SERVER; default %(default)s)",
    )
    conn.add_argument(
        "--token",
        default=os.environ.get("SESSIOND_TOKEN"),
        help="tenant API key (env SESSIOND_TOKEN)",
    )
    conn.add_argument("--json", action="store_true", help="JSON output (one object per line)")

    run = sub.add_parser("run", parents=[conn], help="send a prompt to a session")
    run.add_argument("prompt")
    run.add_argument("--session", default="", help="session id (default: create one)")
    run.add_argument("--snapshot", action="store_true", help="snapshot after the turn")
    run.add_argument("--label", action="append", default=[], metavar="K=V")
    run.set_defaults(run=_wrap(_run))

    sessions = sub.add_parser("sessions", help="list, show and delete sessions")
    ssub = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = ssub.add_parser("ls", parents=[conn], help="list sessions")
    ls.add_argument("--label", action="append", default=[], metavar="K=V")
    ls.add_argument("--all", action="store_true", help="include deleted sessions")
    ls.set_defaults(run=_wrap(_ls))
    show = ssub.add_parser("show", parents=[conn], help="show a session")
    show.add_argument("session_id")
    show.set_defaults(run=_wrap(_show))
    rm = ssub.add_parser("rm", parents=[conn], help="delete a session")
    rm.add_argument("session_id")
    rm.set_defaults(run=_wrap(_rm))

    for name, fn, text in (
        ("suspend", _suspend, "snapshot a session and destroy its sandbox"),
        ("resume", _resume, "hydrate a sandbox for a session now"),
        ("snapshots", _snapshots, "list a session's snapshots"),
    ):
        p = sub.add_parser(name, parents=[conn], help=text)
        p.add_argument("session_id")
        p.set_defaults(run=_wrap(fn))

    fork = sub.add_parser("fork", parents=[conn], help="fork a session (optionally at a message)")
    fork.add_argument("session_id")
    fork.add_argument("--at", default="", metavar="UUID", help="cut after this message")
    fork.set_defaults(run=_wrap(_fork))

    restore = sub.add_parser("restore", parents=[conn], help="rewind a session")
    restore.add_argument("session_id")
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument("--at", default="", metavar="UUID", help="a message uuid")
    target.add_argument("--snapshot", default="", metavar="SID", help="a snapshot id")
    restore.add_argument("--new", action="store_true", help="into a new session")
    restore.set_defaults(run=_wrap(_restore))


def _wrap(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def go() -> int:
            async with AsyncClient(args.server, token=args.token, timeout=60.0) as client:
                return await command(client, args)

        try:
            return asyncio.run(go())
        except SessiondError as exc:
            print(f"sessiond: error: {exc} ({exc.code.name})", file=sys.stderr)
            return 2 if isinstance(exc, InvalidArgument) else 1
        except KeyboardInterrupt:
            return 130

    return run


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidArgument(f"--label {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    if args.json:
        data = (
            json_format.MessageToDict(obj, preserving_proto_field_name=True)
            if hasattr(obj, "DESCRIPTOR")
            else obj
        )
        print(json.dumps(data, sort_keys=True), flush=True)
    else:
        print(text, flush=True)


def _describe(s: common_pb2.Session) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
    return (
        f"{s.session_id}  {_STATES.get(s.state, '?'):10}  turns={s.turn_count}  "
        f"snapshot={s.latest_snapshot_id or '-'}  {labels}"
    ).rstrip()


async def _run(client: AsyncClient, args: argparse.Namespace) -> int:
    session_id = args.session
    if not session_id:
        session = await client.create_session(labels=_labels(args.label))
        session_id = session.session_id
    _emit(args, {"session_id": session_id}, session_id)
    async for event in client.query(session_id, args.prompt, snapshot_after_turn=args.snapshot):
        if args.json:
            _emit(args, event, "")
        elif event.HasField("message"):
            _print_message(event.message)
        elif event.status.phase == sessions_pb2.QueryStatus.PHASE_HYDRATING:
            print("[hydrating a sandbox]", file=sys.stderr, flush=True)
    return 0


def _print_message(message: sessions_pb2.SdkMessage) -> None:
    try:
        data = json.loads(message.json)
    except ValueError:
        return
    if message.type == "assistant":
        for block in data.get("content", []):
            if block.get("type") == "text":
                print(block.get("text", ""), flush=True)
            elif block.get("type") == "tool_use":
                print(f"[tool {block.get('name')}]", flush=True)
    elif message.type == "result":
        print(
            f"[done: {data.get('subtype', '')}, {data.get('num_turns', 0)} turns, "
            f"{data.get('duration_ms', 0)} ms]",
            flush=True,
        )


async def _ls(client: AsyncClient, args: argparse.Namespace) -> int:
    token = ""
    while True:
        page = await client.list_sessions(
            label_selector=_labels(args.label), page_token=token, include_deleted=args.all
        )
        for s in page.sessions:
            _emit(args, s, _describe(s))
        token = page.next_page_token
        if not token:
            return 0


async def _show(client: AsyncClient, args: argparse.Namespace) -> int:
    s = await client.get_session(args.session_id)
    if args.json:
        _emit(args, s, "")
        return 0
    print(f"session   {s.session_id}")
    print(f"state     {_STATES.get(s.state, '?')}")
    print(f"turns     {s.turn_count}")
    print(f"snapshot  {s.latest_snapshot_id or '-'}")
    print(f"sdk id    {s.sdk_session_id or '-'}")
    print(f"sandbox   {s.sandbox_id or '-'} {s.sandbox_cwd}".rstrip())
    if s.forked_from_session_id:
        print(f"forked    {s.forked_from_session_id}")
    for key, value in sorted(s.labels.items()):
        print(f"label     {key}={value}")
    return 0


async def _rm(client: AsyncClient, args: argparse.Namespace) -> int:
    await client.delete_session(args.session_id)
    _emit(args, {"deleted": args.session_id}, f"deleted {args.session_id}")
    return 0


async def _suspend(client: AsyncClient, args: argparse.Namespace) -> int:
    resp = await client.suspend(args.session_id)
    snap = resp.snapshot.snapshot_id if resp.HasField("snapshot") else "-"
    _emit(args, resp, f"suspended {args.session_id} (snapshot {snap})")
    return 0


async def _resume(client: AsyncClient, args: argparse.Namespace) -> int:
    s = await client.resume(args.session_id)
    _emit(args, s, _describe(s))
    return 0


async def _snapshots(client: AsyncClient, args: argparse.Namespace) -> int:
    token = ""
    while True:
        page = await client.list_snapshots(args.session_id, page_token=token)
        for snap in page.snapshots:
            created = snap.create_time.ToDatetime().isoformat(timespec="seconds")
            trigger = common_pb2.SnapshotTrigger.Name(snap.trigger)
            trigger = trigger.removeprefix("SNAPSHOT_TRIGGER_")
            _emit(
                args,
                snap,
                f"{snap.snapshot_id}  {created}  {trigger.lower():8}  files={snap.stats.files}  "
                f"bytes={snap.stats.bytes}  at={snap.transcript_uuid or '-'}",
            )
        token = page.next_page_token
        if not token:
            return 0


async def _fork(client: AsyncClient, args: argparse.Namespace) -> int:
    s = await client.fork(args.session_id, at_message_uuid=args.at)
    _emit(args, s, s.session_id)
    return 0


async def _restore(client: AsyncClient, args: argparse.Namespace) -> int:
    s = await client.restore(
        args.session_id,
        snapshot_id=args.snapshot,
        message_uuid=args.at,
        into_new_session=args.new,
    )
    _emit(args, s, _describe(s))
    return 0
