"""Server-side environment that lets managed sandboxes reach the fake
Messages API: what an operator would export for sessiond to pass through
its allowlist (ANTHROPIC_*, CLAUDE_CODE_*), plus what the CLI needs here."""

from __future__ import annotations

from tests.fakeapi import FakeMessagesAPI

# Running as root with bypassPermissions needs IS_SANDBOX; the DISABLE_*
# switches keep the CLI off the network.
ALLOWLIST = ("ANTHROPIC_*", "CLAUDE_CODE_*", "IS_SANDBOX", "DISABLE_*")


def server_environ(api: FakeMessagesAPI) -> dict[str, str]:
    return {
        "ANTHROPIC_BASE_URL": api.base_url,
        "ANTHROPIC_API_KEY": "test-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "IS_SANDBOX": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        # Must never reach a sandbox: not on the allowlist.
        "AWS_SECRET_ACCESS_KEY": "server-only-secret",
    }
