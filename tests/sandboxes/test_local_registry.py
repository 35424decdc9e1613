"""open_sandbox_provider: names, URLs and options for local and e2b, and the
errors for everything else (docker: tests/sandboxes/test_docker_offline.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sessiond.client.errors import InvalidArgument, Unavailable
from sessiond.server.sandboxes.local import LocalSandboxProvider
from sessiond.server.sandboxes.provider import SandboxProvider, SandboxSpec, run
from sessiond.server.sandboxes.registry import open_sandbox_provider

E2B_AVAILABLE = importlib.util.find_spec("e2b") is not None


async def test_local_default_root(tmp_path: Path) -> None:
    provider = open_sandbox_provider("local", data_dir=tmp_path)
    assert isinstance(provider, LocalSandboxProvider) and isinstance(provider, SandboxProvider)
    assert provider.root == (tmp_path / "sandboxes").resolve()
    info = await provider.create(SandboxSpec("ses"))
    assert info.workdir.startswith(str((tmp_path / "sandboxes").resolve()) + "/")
    await provider.destroy(info.sandbox_id)


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("LOCAL", "sandboxes"),
        ("local:", "sandboxes"),
        ("local:elsewhere", "elsewhere"),
        ("local:/ABS", "/ABS"),
        ("local:///ABS", "/ABS"),
    ],
)
def test_local_roots(tmp_path: Path, url: str, root: str) -> None:
    url = url.replace("/ABS", str(tmp_path / "abs"))
    expected = Path(root.replace("/ABS", str(tmp_path / "abs")))
    provider = open_sandbox_provider(url, data_dir=tmp_path)
    assert isinstance(provider, LocalSandboxProvider)
    assert provider.root == (expected if expected.is_absolute() else tmp_path / expected).resolve()


async def test_local_limits_from_options(tmp_path: Path) -> None:
    provider = open_sandbox_provider("local?nofile=300&fsize=1048576", data_dir=tmp_path)
    info = await provider.create(SandboxSpec("ses"))
    code, out, _ = await run(
        provider,
        info.sandbox_id,
        ["python3", "-c", "import resource as r; print(r.getrlimit(r.RLIMIT_NOFILE)[0])"],
    )
    assert (code, out) == (0, b"300\n")
    await provider.destroy(info.sandbox_id)


@pytest.mark.parametrize(
    "url",
    [
        "local?nofile=-1",
        "local?nofile=many",
        "local?color=blue",
        "local?nofile=1&nofile=2",
        "local://relative",
        "local?garbage",
    ],
)
def test_local_bad_options(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidArgument):
        open_sandbox_provider(url, data_dir=tmp_path)


@pytest.mark.parametrize("url", ["", "modal", "s3://bucket?secret=hunter2", "dockerx:img"])
def test_unknown_provider_is_named_without_options(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        open_sandbox_provider(url, data_dir=tmp_path)
    message = str(caught.value)
    assert repr(url.partition("?")[0].partition(":")[0].lower()) in message
    assert "hunter2" not in message


@pytest.mark.skipif(not E2B_AVAILABLE, reason="the e2b extra is not installed")
async def test_e2b_options_pass_through_typed(tmp_path: Path) -> None:
    from sessiond.server.sandboxes.e2b import E2BSandboxProvider

    provider = open_sandbox_provider(
        "e2b://?template=tmpl&api_url=http://127.0.0.1:9&sandbox_url=http://127.0.0.1:9"
        "&timeout_seconds=60&request_timeout_seconds=2.5",
        data_dir=tmp_path,
        options={"api_key": "k-secret", "template": "overridden-by-url"},
    )
    assert isinstance(provider, E2BSandboxProvider) and isinstance(provider, SandboxProvider)
    assert "tmpl" in repr(provider) and "k-secret" not in repr(provider)
    await provider.close()
    provider = open_sandbox_provider("e2b", data_dir=tmp_path, options={"api_key": "k"})
    assert isinstance(provider, E2BSandboxProvider)
    await provider.close()


@pytest.mark.skipif(not E2B_AVAILABLE, reason="the e2b extra is not installed")
@pytest.mark.parametrize(
    "url",
    [
        "e2b",  # no api_key anywhere
        "e2b://?api_key=k-secret&flavour=x",
        "e2b://?api_key=k-secret&timeout_seconds=soon",
        "e2b://host?api_key=k-secret",
        "e2b:/path?api_key=k-secret",
    ],
)
def test_e2b_bad_options(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        open_sandbox_provider(url, data_dir=tmp_path)
    assert "k-secret" not in str(caught.value)


def test_e2b_without_the_package_is_unavailable(tmp_path: Path) -> None:
    if E2B_AVAILABLE:
        pytest.skip("the e2b package is installed")
    with pytest.raises(Unavailable):
        open_sandbox_provider("e2b://?api_key=k", data_dir=tmp_path)
