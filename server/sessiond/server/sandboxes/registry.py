"""Choose a sandbox provider by name or URL — configuration is parsed here,
at the edge; the providers take explicit arguments.

Accepted values::

    local                          directories under <data_dir>/sandboxes
    local:/abs/root                ... under that root (relative = under data_dir)
    local?nofile=4096&fsize=N&cpu_seconds=N
    docker                         containers of the image "sessiond-sandbox"
    docker:IMAGE[:TAG]             ... of IMAGE (registry/host:port/name:tag allowed)
    docker:IMAGE?network=N&mem_limit=4g&nano_cpus=N&pids_limit=N
    e2b  |  e2b://?template=T&api_url=U&sandbox_url=V&api_key=K
                                   E2BSandboxProvider(**options), imported lazily;
                                   values converted to the parameter's annotated
                                   type (int, float, bool, str)

Anything else → ``InvalidArgument`` naming the provider. Error messages never
repeat an option's value (it may be an API key).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from sessiond.client.errors import InvalidArgument, Unavailable
from sessiond.server.sandboxes.provider import SandboxProvider

_LOCAL_INT_OPTIONS = ("nofile", "fsize", "cpu_seconds")
_DOCKER_OPTIONS = ("network", "mem_limit", "nano_cpus", "pids_limit", "server_address")
E2B_MODULE = "sessiond.server.sandboxes.e2b"
E2B_CLASS = "E2BSandboxProvider"


def open_sandbox_provider(
    url_or_name: str,
    *,
    data_dir: Path,
    server_address: str = "",
    options: Mapping[str, str] | None = None,
) -> SandboxProvider:
    """The provider ``url_or_name`` names (see the module docstring).

    ``server_address``: how a docker sandbox reaches the server (a
    ``server_address`` option in the URL wins). ``options``: defaults for
    the URL's options, for values that should not live in a URL (e.g.
    ``{"api_key": <E2B_API_KEY>}``); the URL's own win. Opening connects
    nothing: Docker and E2B clients are made on first use.
    ``InvalidArgument`` for an unknown provider or option or a bad value;
    ``Unavailable`` if the provider's optional dependency is not installed.
    """
    head, _, query = url_or_name.strip().partition("?")
    name, _, body = head.partition(":")
    name = name.lower()
    if name not in ("local", "docker", "e2b"):
        raise InvalidArgument(
            f"unknown sandbox provider {name!r} (expected local, docker[:IMAGE] or e2b)"
        )
    merged = {**(options or {}), **_options(name, query)}
    if name == "local":
        return _open_local(body, merged, data_dir)
    if name == "docker":
        return _open_docker(body, merged, server_address)
    if body not in ("", "//"):
        raise InvalidArgument("sandbox provider e2b takes options only: e2b://?key=value&...")
    return _open_e2b(merged)


def _options(provider: str, query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise InvalidArgument(f"sandbox provider {provider}: malformed options") from exc
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise InvalidArgument(f"sandbox provider {provider}: option {key!r} given twice")
        options[key] = value
    return options


def _int_option(provider: str, key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise InvalidArgument(f"sandbox provider {provider}: {key} must be a non-negative integer")
    return number


def _unknown(provider: str, options: dict[str, str], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise InvalidArgument(
            f"sandbox provider {provider}: unknown option(s) {', '.join(map(repr, extra))} "
            f"(allowed: {', '.join(allowed)})"
        )


def _open_local(body: str, options: dict[str, str], data_dir: Path) -> SandboxProvider:
    from sessiond.server.sandboxes.local import LocalLimits, LocalSandboxProvider

    _unknown("local", options, _LOCAL_INT_OPTIONS)
    if body.startswith("//"):
        body = body[2:]
        if not body.startswith("/") and body:
            raise InvalidArgument("sandbox provider local: use local:///absolute/path")
    root = data_dir / "sandboxes" if not body else data_dir / body
    limits = LocalLimits(**{k: _int_option("local", k, v) for k, v in options.items()})
    return LocalSandboxProvider(root, limits=limits)


def _open_docker(body: str, options: dict[str, str], server_address: str) -> SandboxProvider:
    from sessiond.server.sandboxes.docker import DockerSandboxProvider

    _unknown("docker", options, _DOCKER_OPTIONS)
    image = body.removeprefix("//") or "sessiond-sandbox"
    kwargs: dict[str, Any] = {"server_address": options.get("server_address", server_address)}
    if options.get("network"):
        kwargs["network"] = options["network"]
    if options.get("mem_limit"):
        kwargs["mem_limit"] = options["mem_limit"]
    for key in ("nano_cpus", "pids_limit"):
        if options.get(key):
            kwargs[key] = _int_option("docker", key, options[key])
    return DockerSandboxProvider(image, **kwargs)


def _open_e2b(options: dict[str, str]) -> SandboxProvider:
    try:
        module = importlib.import_module(E2B_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == "e2b":
            raise Unavailable("sandbox provider e2b needs the e2b package (sessiond[e2b])") from exc
        raise Unavailable(f"sandbox provider e2b is not available: {exc}") from exc
    factory: Callable[..., SandboxProvider] = getattr(module, E2B_CLASS)
    parameters = {
        p.name: p
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    _unknown("e2b", options, tuple(parameters))
    kwargs = {k: _coerce("e2b", k, v, parameters[k].annotation) for k, v in options.items()}
    missing = [
        p.name
        for p in parameters.values()
        if p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise InvalidArgument(f"sandbox provider e2b: missing option(s) {', '.join(missing)}")
    return factory(**kwargs)


def _coerce(provider: str, key: str, value: str, annotation: object) -> object:
    """``value`` as the type ``annotation`` names (annotations are strings
    under postponed evaluation: "int", "float | None", ...)."""
    if isinstance(annotation, type):
        annotation = annotation.__name__
    kind = str(annotation).replace(" ", "").removesuffix("|None").removeprefix("None|")
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError as exc:
        raise InvalidArgument(f"sandbox provider {provider}: {key} must be a {kind}") from exc
    if kind == "bool":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(f"sandbox provider {provider}: {key} must be true or false")
    return value
