"""Process-wide safety net: kill leftover servers and remove temp dirs at exit.

Normal cleanup is done by the context managers; this only catches what a crashed
test or a forgotten ``close()`` left behind. It is the package's only global state.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import subprocess
import threading

__all__ = ["forget_dir", "forget_process", "track_dir", "track_process"]

_lock = threading.Lock()
_processes: set[subprocess.Popen[bytes]] = set()
_dirs: set[str] = set()


def track_process(proc: subprocess.Popen[bytes]) -> None:
    with _lock:
        _processes.add(proc)


def forget_process(proc: subprocess.Popen[bytes]) -> None:
    with _lock:
        _processes.discard(proc)


def track_dir(path: str) -> None:
    with _lock:
        _dirs.add(path)


def forget_dir(path: str) -> None:
    with _lock:
        _dirs.discard(path)


@atexit.register
def _reap() -> None:
    with _lock:
        procs, dirs = list(_processes), list(_dirs)
        _processes.clear()
        _dirs.clear()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
