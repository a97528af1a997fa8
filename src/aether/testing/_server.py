"""A single real ``nats-server`` process with JetStream, for tests and demos."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _reaper
from ._aio import StartCloseContext
from ._binary import find_nats_server
from ._http import get_json, get_status
from ._ports import LOOPBACK, free_ports, port_accepts

__all__ = ["NatsServer", "NatsServerStartupError"]

_POLL_INTERVAL = 0.02
_ADDR_IN_USE = "address already in use"
_AUTO_PORT_ATTEMPTS = 3


class NatsServerStartupError(RuntimeError):
    """``nats-server`` exited or did not become healthy within the startup timeout.

    The message ends with the tail of the server's log.
    """


class NatsServer(StartCloseContext):
    """A ``nats-server`` subprocess on loopback, with JetStream and a private temp dir.

    Use it as a context manager (``with`` or ``async with``): entering starts the
    server and waits until it is healthy; leaving stops it and removes the temp dir
    (store, config and log), even when the body raised. The client port, monitoring
    port and store dir are fixed for the object's lifetime, so :meth:`restart` after
    :meth:`stop` or :meth:`kill` comes back on the same URL with the same data.

    Everything is synchronous (subprocess + polling). From async code, ``async with``
    runs the blocking parts in a thread; for other blocking calls inside a running
    event loop use ``await asyncio.to_thread(server.restart)``.

    Args:
        port: client port; a free loopback port is chosen if ``None``.
        monitor_port: HTTP monitoring port (used for readiness); free port if ``None``.
        store_dir: JetStream store dir; defaults to ``<temp dir>/store``. A directory
            given here is *not* removed on exit.
        extra_args: extra command-line arguments appended last (auth, TLS, ...).
        config: config file text, written to the temp dir and passed with ``-c``.
            Command-line flags set by this class (``-a -p -m -js -sd``) take precedence.
        jetstream: run with JetStream enabled (``-js``).
        server_name: ``server_name`` of the server (``-n``); nats-server's default if ``None``.
        startup_timeout: seconds :meth:`start` waits for the server to become healthy.
        stop_timeout: seconds :meth:`stop` waits after SIGTERM before sending SIGKILL.
        binary: path of the executable; :func:`find_nats_server` is used if ``None``.

    Raises:
        NatsServerNotFoundError: (from the constructor) if no binary can be found.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        config: str | None = None,
        jetstream: bool = True,
        server_name: str | None = None,
        startup_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        self.binary = os.fspath(binary) if binary is not None else find_nats_server()
        self.jetstream = jetstream
        self.server_name = server_name
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout

        self._auto_port = port is None
        self._auto_monitor_port = monitor_port is None
        auto = free_ports(2)
        self.port: int = port if port is not None else auto[0]
        self.monitor_port: int = monitor_port if monitor_port is not None else auto[1]

        self._tmp_dir = tempfile.mkdtemp(prefix="aether-nats-")
        _reaper.track_dir(self._tmp_dir)
        self.tmp_dir = Path(self._tmp_dir)
        self.store_dir: Path = Path(store_dir) if store_dir is not None else self.tmp_dir / "store"
        self.log_path: Path = self.tmp_dir / "nats-server.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.tmp_dir / "nats-server.conf"
            self.config_path.write_text(config, encoding="utf-8")

        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._ever_started = False
        self._closed = False

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoint, ``http://127.0.0.1:<monitor_port>``."""
        return f"http://{LOOPBACK}:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        """PID of the running server process, ``None`` if not running."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the server process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The command line :meth:`start` runs."""
        args = [self.binary, "-a", LOOPBACK, "-p", str(self.port), "-m", str(self.monitor_port)]
        if self.server_name is not None:
            args += ["-n", self.server_name]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        if self.config_path is not None:
            args += ["-c", str(self.config_path)]
        args += self.extra_args
        return args

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the server and block until it is healthy.

        Readiness means ``/healthz`` (``?js-enabled-only=true`` with JetStream) answers
        200 and the client port accepts connections.

        Raises:
            RuntimeError: if already running or closed.
            NatsServerStartupError: if the process exits or is not healthy in time.
        """
        self._spawn()
        try:
            self._wait_ready(time.monotonic() + self.startup_timeout)
        except NatsServerStartupError as exc:
            self.kill()
            if self._ever_started or _ADDR_IN_USE not in str(exc):
                raise
            self._retry_with_new_ports(exc)
        self._ever_started = True

    def _retry_with_new_ports(self, first_error: NatsServerStartupError) -> None:
        # Only ports we picked ourselves may be changed, and only before the first
        # successful start (afterwards the URL is part of the contract).
        if not (self._auto_port or self._auto_monitor_port):
            raise first_error
        error = first_error
        for _ in range(_AUTO_PORT_ATTEMPTS):
            new = free_ports(2)
            if self._auto_port:
                self.port = new[0]
            if self._auto_monitor_port:
                self.monitor_port = new[1]
            self._spawn()
            try:
                self._wait_ready(time.monotonic() + self.startup_timeout)
                return
            except NatsServerStartupError as exc:
                self.kill()
                if _ADDR_IN_USE not in str(exc):
                    raise
                error = exc
        raise error

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: SIGTERM, wait up to ``timeout`` (default ``stop_timeout``),
        then SIGKILL. The store dir is kept. No-op if not running."""
        self._signal_stop()
        self._await_exit(self.stop_timeout if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests) and reap it. Data dir is kept.
        No-op if not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _reaper.forget_process(proc)
        self._proc = None

    def restart(self) -> None:
        """Start again on the same ports with the same store dir.

        Stops the server first if it is still running (use :meth:`kill` before for a
        crash-restart). Raises like :meth:`start`.
        """
        if self.is_running:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server (SIGKILL if SIGTERM does not work) and delete the temp dir.

        Idempotent; the object cannot be started again afterwards.
        """
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self.kill()
            self._closed = True
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            _reaper.forget_dir(self._tmp_dir)

    # ------------------------------------------------------------------ monitoring

    def monitor(self, path: str, timeout: float = 2.0) -> dict[str, Any]:
        """GET a monitoring endpoint (e.g. ``"/jsz?streams=true"``) and decode its JSON.

        Raises:
            ConnectionError: if the endpoint does not answer with a JSON object.
        """
        data = get_json(self.monitor_url + path, timeout=timeout)
        if data is None:
            raise ConnectionError(f"no JSON from {self.monitor_url}{path}")
        return data

    def read_log(self) -> str:
        """Everything the server has logged so far (all runs of this object)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the log of the current (or last) run."""
        try:
            with self.log_path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(self._log_offset, size - max_bytes))
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ internals

    def _spawn(self) -> None:
        """Launch the process without waiting for readiness (used by NatsCluster)."""
        if self._closed:
            raise RuntimeError("NatsServer is closed")
        if self.is_running:
            raise RuntimeError(f"nats-server already running (pid {self.pid})")
        self.kill()  # reap an exited process, if any
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            # The child gets its own copy of the fd; nothing can fill up a pipe.
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._tmp_dir,
            )
        self._proc = proc
        _reaper.track_process(proc)

    def _healthz_path(self) -> str:
        return "/healthz?js-enabled-only=true" if self.jetstream else "/healthz"

    def _wait_ready(self, deadline: float) -> None:
        """Poll until healthy; raise NatsServerStartupError on exit or timeout."""
        url = self.monitor_url + self._healthz_path()
        while True:
            proc = self._proc
            if proc is None:
                raise NatsServerStartupError("nats-server is not running")
            code = proc.poll()
            if code is not None:
                raise NatsServerStartupError(
                    f"nats-server exited with code {code} during startup "
                    f"(port {self.port}); log tail:\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NatsServerStartupError(
                    f"nats-server on port {self.port} not healthy within "
                    f"{self.startup_timeout}s; log tail:\n{self.log_tail()}"
                )
            timeout = min(0.5, remaining)
            if get_status(url, timeout=timeout) == 200 and port_accepts(self.port, timeout=timeout):
                return
            time.sleep(_POLL_INTERVAL)

    def _signal_stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def _await_exit(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _reaper.forget_process(proc)
        self._proc = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        return f"<NatsServer {self.url} {state} store_dir={str(self.store_dir)!r}>"
