"""A local fake of the E2B cloud (control API + envd) that the real e2b SDK
talks to unmodified. See :mod:`tests.fakee2b.server` for the entry point."""

from tests.fakee2b.asgi import Call
from tests.fakee2b.processes import Isolation
from tests.fakee2b.server import FakeE2B

__all__ = ["Call", "FakeE2B", "Isolation"]
