"""The service descriptor (``cdlib.yml``) and the environment, turned into frozen, validated values.

Every field is checked; a bad one raises :class:`ConfigError` with one line naming the file, the key
and what is expected. Nothing is touched before the whole descriptor is valid.

Relative paths in the descriptor (build contexts, templates, test files) are relative to the
descriptor's directory. Machine state (the embedded store, the private nginx) lives under
``CDLIB_HOME`` (default ``./.cdlib``) unless the descriptor or the environment says otherwise.

The package: :mod:`~cdlib.config.spec` holds the value types (:class:`ServiceSpec` and its sections)
and the single-value checks, :mod:`~cdlib.config.schema` the safe YAML reader and the public
:class:`~cdlib.config.schema.Reader` (shared with the job catalog), :mod:`~cdlib.config.sections`
one parse function per section and :func:`parse`. Everything is importable from ``cdlib.config``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError
from ..redact import redact_url as redact_url
from .schema import (
    MAX_ALIASES,
    MAX_COMMAND,
    MAX_DEPTH,
    MAX_ENV_VALUE,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_NUMBER_TEXT,
    SHOWN,
    FileProblem,
    Reader,
    as_text,
    key_text,
    read_bounded,
    read_yaml,
    shown,
    size_text,
)
from .sections import (
    SQLITE_HEADER,
    check_sqlite_file,
    parse,
    parse_health,
    parse_image,
    parse_probe,
    parse_proxy,
    parse_routes,
    parse_store,
    parse_suite,
    parse_target,
    parse_tests,
)
from .spec import (
    ARG_RE,
    CFG_UNSAFE_RE,
    DEFAULT_FILE,
    DOCKER_SCHEMES,
    EXPECT_RE,
    HOST_PORTS_RE,
    HOSTNAME_RE,
    IMAGE_REPO_RE,
    LISTEN_RE,
    MAX_IMAGE_NAME,
    NETWORK_RE,
    PLANNED_TARGET_KINDS,
    TAG_RE,
    TARGET_KINDS,
    BuildSpec,
    HealthSpec,
    ImageSpec,
    ProbeSpec,
    ProxySpec,
    ServiceSpec,
    SuiteSpec,
    TargetSpec,
    cdlib_home,
    docker_host_problem,
    image_repo_problem,
    ip_problem,
    listen_problem,
    split_image_ref,
)

__all__ = [
    "ARG_RE", "CFG_UNSAFE_RE", "DEFAULT_FILE", "DOCKER_SCHEMES", "EXPECT_RE", "HOSTNAME_RE", "HOST_PORTS_RE",
    "IMAGE_REPO_RE", "LISTEN_RE", "MAX_ALIASES", "MAX_COMMAND", "MAX_DEPTH", "MAX_ENV_VALUE", "MAX_FILE_BYTES",
    "MAX_IMAGE_NAME", "MAX_NODES", "MAX_NUMBER_TEXT", "NETWORK_RE", "PLANNED_TARGET_KINDS", "SHOWN",
    "SQLITE_HEADER", "TAG_RE", "TARGET_KINDS", "BuildSpec", "FileProblem", "HealthSpec", "ImageSpec",
    "ProbeSpec", "ProxySpec", "Reader", "ServiceSpec", "SuiteSpec", "TargetSpec", "as_text", "cdlib_home",
    "check_sqlite_file", "docker_host_problem", "image_repo_problem", "ip_problem", "key_text",
    "listen_problem", "load", "parse", "parse_health", "parse_image", "parse_probe", "parse_proxy",
    "parse_routes", "parse_store", "parse_suite", "parse_target", "parse_tests", "read_bounded",
    "read_yaml", "redact_url", "shown", "size_text", "split_image_ref",
]


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> ServiceSpec:
    """Read and validate a descriptor file (default: ./cdlib.yml, or $CDLIB_FILE)."""
    env = os.environ if env is None else env
    if path is not None and not str(path):
        # an empty -f would otherwise mean "the default file": another descriptor than the one asked for
        raise ConfigError("--file: expected a descriptor path, got an empty value", key="--file")
    path = Path(path or env.get("CDLIB_FILE") or DEFAULT_FILE)
    data = read_yaml(path, "descriptor", "pass -f PATH or create cdlib.yml")
    return parse(data, str(path), path.absolute().parent, env)
