"""Log output of ``sessiond serve``: ``--log-format text`` (one human line per
record) or ``json`` (one JSON object per line).

A JSON line carries ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``
and, for the interceptor's one-line-per-RPC record, the RPC's fields at top
level (``method``, ``code``, ``tenant``, ``duration_ms`` and the ids and byte
counts servicers attached). What is logged is what the code logs: ids,
counts, durations — never request content or credentials.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Record attributes the JSON line never overwrites with RPC fields.
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rpc = getattr(record, "rpc", None)
        if isinstance(rpc, dict):
            out.update({k: v for k, v in rpc.items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str, fmt: str, stream: TextIO) -> None:
    """Send every logger's records at ``level`` and above to ``stream`` in
    ``fmt`` (``text`` or ``json``), replacing earlier handlers of the root
    logger."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
