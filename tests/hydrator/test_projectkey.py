"""The SDK's project key: asked of the SDK (in a child or in-process), and
remembered per directory and SDK install so later commands skip the import."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from claude_agent_sdk import project_key_for_directory

from sessiond.hydrator import projectkey


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []

    def compute(directory: str) -> str:
        asked.append(directory)
        return str(project_key_for_directory(directory))

    monkeypatch.setattr(projectkey, "compute", compute)
    return asked


def test_the_key_is_remembered_per_directory_and_sdk(
    tmp_path: Path, counted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / ".sessiond"
    work, other = str(tmp_path / "work"), str(tmp_path / "other")
    assert projectkey.project_key(work, state) == project_key_for_directory(work)
    assert projectkey.project_key(work, state) == project_key_for_directory(work)
    assert counted == [work]  # the second answer came from the memo
    assert projectkey.project_key(other, state) == project_key_for_directory(other)
    assert counted == [work, other]
    # Another SDK install (upgraded in place): asked again.
    monkeypatch.setattr(projectkey, "_sdk_fingerprint", lambda: "another-sdk")
    assert projectkey.remembered(other, state) is None
    projectkey.project_key(other, state)
    assert counted == [work, other, other]


def test_a_corrupt_memo_is_ignored(tmp_path: Path, counted: list[str]) -> None:
    state = tmp_path / ".sessiond"
    state.mkdir()
    (state / projectkey.MEMO_FILE).write_text("{not json")
    assert projectkey.project_key("/x/y", state) == project_key_for_directory("/x/y")
    assert counted == ["/x/y"]


def test_the_child_answers_what_the_sdk_answers(tmp_path: Path) -> None:
    directory = str(tmp_path / "some dir" / "ünïcode")
    job = projectkey.Background(directory)
    try:
        assert job.result() == project_key_for_directory(directory)
    finally:
        job.close()


def test_without_a_child_the_key_is_computed_here(
    monkeypatch: pytest.MonkeyPatch, counted: list[str]
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    job = projectkey.Background("/some/where")
    assert job.result() == project_key_for_directory("/some/where")
    assert counted == ["/some/where"]
    job.close()
