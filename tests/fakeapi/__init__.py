"""A loopback fake of the Anthropic Messages API for driving the real Claude Code CLI.

See README.md beside this file for what the CLI sends and what it writes.
"""

from __future__ import annotations

from tests.fakeapi.cli_env import bundled_cli, cli_env
from tests.fakeapi.recorded import RecordedRequest
from tests.fakeapi.server import FakeMessagesAPI, Responder
from tests.fakeapi.steps import Step, api_error, text, tool_use

__all__ = [
    "FakeMessagesAPI",
    "RecordedRequest",
    "Responder",
    "Step",
    "api_error",
    "bundled_cli",
    "cli_env",
    "text",
    "tool_use",
]
