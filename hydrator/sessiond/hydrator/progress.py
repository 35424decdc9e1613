"""Progress reporting for snapshot/restore/watch.

:class:`Progress` counts (thread-safe; the hooks are called from reader
threads) and shows nothing; :class:`BarProgress` draws one line on a TTY
(stderr), :class:`JsonProgress` writes JSON lines. Reports never contain
file contents; paths are only counted, never printed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

_INTERVAL = 0.1


class Progress:
    """Counters behind every reporter. Subclasses override :meth:`render`
    (throttled) and :meth:`finish`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phase = ""
        self.files_seen = 0
        self.files_read = 0
        self.bytes_read = 0
        self.bytes_uploaded = 0
        self.started = time.monotonic()
        self._last = 0.0

    def start(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            self.files_seen = self.files_read = self.bytes_read = self.bytes_uploaded = 0
            self.started = time.monotonic()
        self._tick(force=True)

    def scanned(self, files: int) -> None:
        with self._lock:
            self.files_seen += files
        self._tick()

    def file_read(self, relpath: bytes, nbytes: int) -> None:
        """A file was read (and hashed); ``relpath`` is for subclasses that
        need to know which (tests)."""
        with self._lock:
            self.files_read += 1
            self.bytes_read += nbytes
        self._tick()

    def uploaded(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_uploaded += nbytes
        self._tick()

    def bytes_done(self, done: int, total: int) -> None:
        """Byte-level progress of a restore (``done`` of ``total``)."""
        with self._lock:
            self.bytes_read = done
        self._tick()

    def done(self, **summary: Any) -> None:
        self.finish(summary)

    # -- rendering -----------------------------------------------------------

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < _INTERVAL:
            return
        self._last = now
        self.render()

    def render(self) -> None:
        """Show the current counters (called at most every 0.1 s)."""

    def finish(self, summary: dict[str, Any]) -> None:
        """Show the final summary."""

    def counters(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "phase": self.phase,
            "files_seen": self.files_seen,
            "files_read": self.files_read,
            "bytes_read": self.bytes_read,
            "bytes_uploaded": self.bytes_uploaded,
            "read_rate": round(self.bytes_read / elapsed),
            "elapsed": round(elapsed, 3),
        }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class BarProgress(Progress):
    """One self-overwriting line on a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream or sys.stderr

    def render(self) -> None:
        c = self.counters()
        line = (
            f"{c['phase']}: {c['files_seen']} files, read {c['files_read']}"
            f" ({_human(c['bytes_read'])}, {_human(c['read_rate'])}/s),"
            f" sent {_human(c['bytes_uploaded'])}"
        )
        self._stream.write("\r\x1b[K" + line[:200])
        self._stream.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        self.render()
        self._stream.write("\n")
        self._stream.flush()


class JsonProgress(Progress):
    """JSON lines: ``{"event": "progress", ...counters}`` and a final
    ``{"event": "done", ...summary}``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream or sys.stderr
        self._out = threading.Lock()

    def _emit(self, obj: dict[str, Any]) -> None:
        with self._out:
            self._stream.write(json.dumps(obj, sort_keys=True) + "\n")
            self._stream.flush()

    def render(self) -> None:
        self._emit({"event": "progress", **self.counters()})

    def finish(self, summary: dict[str, Any]) -> None:
        self._emit({"event": "done", **self.counters(), **summary})


def make_progress(mode: str, stream: TextIO | None = None) -> Progress:
    """``auto``: a bar on a TTY, else quiet; ``json``; ``none``."""
    stream = stream or sys.stderr
    if mode == "json":
        return JsonProgress(stream)
    if mode == "auto" and stream.isatty():
        return BarProgress(stream)
    return Progress()
