"""The host's pip configuration, carried into the environment build sandbox.

Operators point pip at internal indexes, certificate bundles, local wheel directories
and constraint files through pip.conf files and PIP_* variables. The build sandbox sees
none of the host's files, so the configuration files are bound into it read-only, the
PIP_* variables are passed on, and every local path they name (a find-links directory,
a file:// index, a constraints file, a CA bundle) is bound read-only too. Nothing else
of the host is visible to the untrusted build code. The remote indexes they name are
the only destinations a build with egress may reach (`index_destinations`).
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from attune.runner.host import untraversable_ancestors

# pip's default index and the host it serves files from.
PYPI_DESTINATIONS = ("pypi.org tcp/443", "files.pythonhosted.org tcp/443")
_URL_OPTIONS = frozenset({"index-url", "extra-index-url", "find-links"})
_TRUE = frozenset({"1", "true", "yes", "on"})
# Where pip reads configuration, in its own order (site config lives in the venv).
CONFIG_FILES = (
    "/etc/pip.conf",
    "/etc/xdg/pip/pip.conf",
    "/root/.pip/pip.conf",
    "/root/.config/pip/pip.conf",
)
# Options whose values may name local files or directories.
_PATH_OPTIONS = frozenset(
    {
        "find-links",
        "index-url",
        "extra-index-url",
        "constraint",
        "cert",
        "client-cert",
        "requirement",
    }
)


@dataclass(frozen=True)
class PipSettings:
    """What the build sandbox gets: PIP_* variables, config files and local paths to bind."""

    env: dict[str, str]
    config_files: tuple[str, ...]
    local_paths: tuple[str, ...]
    # Remote (http/https) index-url, extra-index-url and find-links values pip will use.
    remote_urls: tuple[str, ...] = ()
    own_index: bool = False  # an index-url is set (else pip's default index is PyPI)
    no_index: bool = False


def local_path(value: str) -> str | None:
    """The absolute local path a pip option value names (a path or file:// URL), else None."""
    value = value.strip()
    if value.startswith("file:"):
        path = unquote(urlparse(value).path)
        return path or None
    return value if value.startswith("/") else None


def _option_values(text: str) -> Iterable[tuple[str, str]]:
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return
    for section in parser.sections():
        for key, value in parser.items(section):
            for item in value.split():
                yield key.replace("_", "-"), item


def settings_from(environ: Mapping[str, str], config_texts: Mapping[str, str]) -> PipSettings:
    """Pure: the settings for these variables and config files (path -> text)."""
    env = {k: v for k, v in environ.items() if k.startswith("PIP_") and k != "PIP_CONFIG_FILE"}
    pairs: list[tuple[str, str]] = []
    for name, value in env.items():
        option = name[4:].lower().replace("_", "-")
        pairs += [(option, item) for item in value.split()]
    for text in config_texts.values():
        pairs += list(_option_values(text))
    paths = {p for option, v in pairs if option in _PATH_OPTIONS if (p := local_path(v))}
    remote = [v for o, v in pairs if o in _URL_OPTIONS and v.startswith(("http://", "https://"))]
    no_index = any(o == "no-index" and v.lower() in _TRUE for o, v in pairs)
    own_index = any(o == "index-url" for o, _ in pairs)
    return PipSettings(
        env=env,
        config_files=tuple(sorted(config_texts)),
        local_paths=tuple(sorted(os.path.normpath(p) for p in paths)),
        remote_urls=tuple(dict.fromkeys(remote)),
        own_index=own_index,
        no_index=no_index,
    )


def index_destinations(settings: PipSettings) -> list[str]:
    """Egress allow entries (`HOST tcp/PORT`) for the remote indexes pip will use.

    index-url, extra-index-url and find-links URLs on their port (443 for https, 80 for
    http, unless the URL names one). With no index-url at all, pip's default index is
    PyPI, which serves its files from a second host. `no-index`: nothing remote at all.
    """
    if settings.no_index:
        return []
    out: list[str] = []
    for url in settings.remote_urls:
        parts = urlparse(url)
        if not parts.hostname:
            continue
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        out.append(f"{parts.hostname} tcp/{port}")
    if not settings.own_index:
        out += list(PYPI_DESTINATIONS)
    return list(dict.fromkeys(out))


def host_settings(environ: Mapping[str, str] | None = None) -> PipSettings:
    """The settings of this host: PIP_* of the environment and the config files present."""
    env = os.environ if environ is None else environ
    files = list(CONFIG_FILES)
    if env.get("PIP_CONFIG_FILE"):
        files.append(env["PIP_CONFIG_FILE"])
    texts: dict[str, str] = {}
    for name in files:
        path = Path(name)
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    found = settings_from(env, texts)
    # A path the build uid cannot reach cannot be bound (its pip option then fails).
    reachable = tuple(p for p in found.local_paths if not untraversable_ancestors(p))
    return dataclasses.replace(found, local_paths=reachable)
