"""The Claude config state that rides along with a snapshot
(``Manifest.config_tree_id``).

From ``$CLAUDE_CONFIG_DIR`` (layout: ``tests/fakeapi/README.md``):

* ``file-history/<sid>/**`` — the SDK's checkpoint backups, which nothing
  else carries: always;
* ``projects/<project_key>/<sid>.jsonl`` and ``projects/<project_key>/<sid>/**``
  (subagents + meta) — only with ``include_transcript``, i.e. when the
  transcript is not already mirrored to sessiond's TranscriptService.

The tree mirrors those relative paths (``projects/<key>/...``,
``file-history/<sid>/...``); directories are built with the same
:class:`TreeBuilder` machinery (stat cache, fingerprints) as the workspace.
Only complete lines of the main JSONL are taken (a line being appended is
left for the next snapshot), and the transcript position (uuid of the last
entry that has one, number of entries) is computed from those same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sessiond.api.v1 import format_pb2
from sessiond.client import workspace_format as wf

from . import projectkey
from .chunker import chunk_bytes
from .trees import Ready, TreeBuilder, _Task
from .upload import DATA, TREE

log = logging.getLogger(__name__)

CACHE_FILE_NAME = "configcache.sqlite"


@dataclass(frozen=True, slots=True)
class TranscriptPosition:
    """``uuid`` of the last entry carrying one; ``seq`` = number of entries."""

    uuid: str = ""
    seq: int = 0


@dataclass(frozen=True, slots=True)
class ConfigState:
    """What was found; ``tree_id`` is filled in by :meth:`ConfigCollector.finish`."""

    project_key: str
    position: TranscriptPosition
    file_history_included: bool
    tree_id: bytes = b""


def project_key(cwd: Path, state_dir: Path | None = None) -> str:
    """The SDK's project key for ``cwd`` (never re-implemented here; see
    :mod:`.projectkey` for the memo in ``state_dir``)."""
    return projectkey.project_key(str(cwd), state_dir)


def transcript_position(data: bytes) -> TranscriptPosition:
    """Position of a JSONL transcript made of complete lines."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("uuid"), str) and entry["uuid"]:
            return TranscriptPosition(entry["uuid"], len(lines))
    return TranscriptPosition("", len(lines))


def _read_complete_lines(path: Path) -> tuple[bytes, os.stat_result] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        data = f.read()
    return data[: data.rfind(b"\n") + 1], st


def _real_dir(path: Path) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISDIR(st.st_mode) else None


class ConfigCollector:
    """Collects the config state of one session. :meth:`visit` (phase 1) and
    :meth:`finish` (after ``builder.build()``) run on the builder's thread."""

    def __init__(
        self,
        builder: TreeBuilder,
        config_dir: Path,
        cwd: Path,
        session_id: str,
        *,
        include_transcript: bool,
        state_dir: Path | None = None,
    ) -> None:
        self.builder = builder
        self.config_dir = config_dir
        self.session_id = session_id
        self.key = project_key(cwd, state_dir)
        self.include_transcript = include_transcript
        self._transcript: tuple[bytes, os.stat_result] | None = None
        self._subagents: tuple[Ready | _Task, os.stat_result] | None = None
        self._history: tuple[Ready | _Task, os.stat_result] | None = None
        self.position = TranscriptPosition()
        # Trees made here (not by the builder), remembered after the commit.
        self.trees: list[bytes] = []

    def visit(self) -> None:
        sid, key = self.session_id, self.key
        project = self.config_dir / "projects" / key
        self._transcript = _read_complete_lines(project / f"{sid}.jsonl")
        if self._transcript is not None:
            self.position = transcript_position(self._transcript[0])
        if not self.include_transcript:
            self._transcript = None
        else:
            sub_st = _real_dir(project / sid)
            if sub_st is not None:
                rel = f"projects/{key}/{sid}".encode()
                node = self.builder.visit(os.fsencode(project / sid), rel, depth=3)
                self._subagents = (node, sub_st)
        hist = self.config_dir / "file-history" / sid
        hist_st = _real_dir(hist)
        if hist_st is not None:
            node = self.builder.visit(os.fsencode(hist), f"file-history/{sid}".encode(), depth=2)
            self._history = (node, hist_st)

    def finish(self) -> ConfigState:
        """Assemble the config tree (after the builder built its trees)."""
        sid, key = self.session_id.encode(), self.key.encode()
        top: list[format_pb2.Node] = []
        project_nodes: list[format_pb2.Node] = []
        if self._transcript is not None:
            data, st = self._transcript
            submit = self.builder.uploader.submit
            ids = chunk_bytes(
                data, self.builder.key, self.builder.params, lambda c, d: submit(c, DATA, d)
            )
            project_nodes.append(
                format_pb2.Node(
                    name=sid + b".jsonl",
                    type=wf.FILE,
                    mode=wf.node_mode(st.st_mode),
                    mtime_ns=st.st_mtime_ns,
                    size=len(data),
                    chunk_ids=ids,
                )
            )
        if self._subagents is not None:
            node, st = self._subagents
            project_nodes.append(self._dir_node(sid, st, node.tree_id))
        projects = self.config_dir / "projects"
        if project_nodes:
            key_tree = self._tree(project_nodes)
            key_node = self._dir_node(key, _real_dir(projects / self.key), key_tree)
            top.append(self._dir_node(b"projects", _real_dir(projects), self._tree([key_node])))
        if self._history is not None:
            node, st = self._history
            hist = self._tree([self._dir_node(sid, st, node.tree_id)])
            top.append(
                self._dir_node(b"file-history", _real_dir(self.config_dir / "file-history"), hist)
            )
        return ConfigState(
            project_key=self.key,
            position=self.position,
            file_history_included=self._history is not None,
            tree_id=self._tree(top) if top else b"",
        )

    def _dir_node(self, name: bytes, st: os.stat_result | None, tree_id: bytes) -> format_pb2.Node:
        return format_pb2.Node(
            name=name,
            type=wf.DIR,
            mode=wf.node_mode(st.st_mode) if st else 0o700,
            mtime_ns=st.st_mtime_ns if st else 0,
            subtree_id=tree_id,
        )

    def _tree(self, nodes: list[format_pb2.Node]) -> bytes:
        data = wf.serialize_tree(nodes)
        tid = wf.chunk_id(self.builder.key, data)
        self.trees.append(tid)
        if not self.builder.cache.has_tree(tid):
            self.builder.uploader.submit(tid, TREE, data)
        return tid
