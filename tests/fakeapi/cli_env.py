"""Environment for running the real Claude Code CLI hermetically against the fake.

``cli_env(base_url, root)`` returns the variables to pass as
``ClaudeAgentOptions(env=...)`` (the SDK lays them over ``os.environ``) or to
merge into a child process's environment. Everything the CLI writes lands under
``root``: ``root/config`` (CLAUDE_CONFIG_DIR: transcripts, file-history),
``root/tmp`` (CLAUDE_CODE_TMPDIR) and ``root/home`` (HOME).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import claude_agent_sdk

# Inherited variables that would send the CLI elsewhere or change its model or
# auth. The SDK merges options.env over os.environ and cannot unset a key, so
# any of these present in our environment are overridden with "" (false).
_NEUTRALISE = (
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_CUSTOM_HEADERS",
    "ANTHROPIC_BETAS",
    "ANTHROPIC_UNIX_SOCKET",
    "ANTHROPIC_PROFILE",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_USE_FOUNDRY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def cli_env(
    base_url: str,
    root: Path,
    *,
    config_dir: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Variables that point the CLI at ``base_url`` and keep it inside ``root``.

    ``config_dir`` overrides ``root/config`` (pass the same one to a second
    process to resume its sessions). Directories are created. ``extra`` wins
    over everything.
    """
    config = config_dir or root / "config"
    tmp, home = root / "tmp", root / "home"
    for d in (config, tmp, home):
        d.mkdir(parents=True, exist_ok=True)
    env = {key: "" for key in _NEUTRALISE if key in os.environ}
    env.update(
        {
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "test-key",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CONFIG_DIR": str(config),
            "CLAUDE_CODE_TMPDIR": str(tmp),
            "HOME": str(home),
            # root + permission_mode="bypassPermissions" is refused without it
            "IS_SANDBOX": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    env.update(extra or {})
    return env


def bundled_cli() -> Path:
    """The Claude Code binary shipped inside the claude-agent-sdk wheel."""
    return Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
