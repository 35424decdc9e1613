"""Protobuf ⇄ record conversion, shared by the servicers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sessiond.api.v1 import common_pb2

from ..storage.records import SessionRecord, SessionState, SnapshotRecord

M = TypeVar("M", bound=Message)

_STATE_TO_PB = {
    SessionState.NEW: common_pb2.SESSION_STATE_NEW,
    SessionState.HYDRATING: common_pb2.SESSION_STATE_HYDRATING,
    SessionState.ACTIVE: common_pb2.SESSION_STATE_ACTIVE,
    SessionState.SUSPENDING: common_pb2.SESSION_STATE_SUSPENDING,
    SessionState.SUSPENDED: common_pb2.SESSION_STATE_SUSPENDED,
    SessionState.DELETED: common_pb2.SESSION_STATE_DELETED,
}


def timestamp(value: datetime | None) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(value)
    return ts


def message_to_dict(message: Message) -> dict[str, Any]:
    """Only the fields that are set, with proto field names (stored as JSON)."""
    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data


def dict_to_message(data: dict[str, Any], message: M) -> M:
    json_format.ParseDict(data, message, ignore_unknown_fields=True)
    return message


def session_to_pb(record: SessionRecord) -> common_pb2.Session:
    return common_pb2.Session(
        session_id=record.session_id,
        state=_STATE_TO_PB[record.state],
        labels=record.labels,
        sdk_session_id=record.sdk_session_id or "",
        agent_options=dict_to_message(record.agent_options, common_pb2.AgentOptions()),
        snapshot_policy=dict_to_message(record.snapshot_policy, common_pb2.SnapshotPolicy()),
        latest_snapshot_id=record.latest_snapshot_id or "",
        forked_from_session_id=record.forked_from or "",
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
        last_active_time=timestamp(record.last_active_at),
        sandbox_id=record.sandbox_id or "",
        sandbox_cwd=record.sandbox_cwd or "",
        turn_count=record.turn_count,
    )


_TRIGGER_TO_PB = {
    "manual": common_pb2.SNAPSHOT_TRIGGER_MANUAL,
    "idle": common_pb2.SNAPSHOT_TRIGGER_IDLE,
    "turn": common_pb2.SNAPSHOT_TRIGGER_TURN,
    "shutdown": common_pb2.SNAPSHOT_TRIGGER_SHUTDOWN,
    "watch": common_pb2.SNAPSHOT_TRIGGER_WATCH,
    "import": common_pb2.SNAPSHOT_TRIGGER_IMPORT,
    "fork": common_pb2.SNAPSHOT_TRIGGER_FORK,
    "restore": common_pb2.SNAPSHOT_TRIGGER_RESTORE,
}


def snapshot_to_pb(record: SnapshotRecord) -> common_pb2.Snapshot:
    return common_pb2.Snapshot(
        snapshot_id=record.snapshot_id,
        session_id=record.session_id,
        parent_snapshot_id=record.parent_snapshot_id or "",
        manifest_id=record.manifest_id,
        transcript_uuid=record.transcript_uuid or "",
        transcript_seq=record.transcript_seq,
        file_history_included=record.file_history_included,
        trigger=_TRIGGER_TO_PB.get(record.trigger, common_pb2.SNAPSHOT_TRIGGER_UNSPECIFIED),
        stats=dict_to_message(record.stats, common_pb2.SnapshotStats()),
        create_time=timestamp(record.created_at),
    )
