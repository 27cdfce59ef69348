"""Start and stop a local MongoDB-wire server (SecantusDB) as a separate process, for tests and demos.

SecantusDB is GPL-2.0, so it is only ever run as its own process, never imported.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient

ENV_URL = "CORE4CELERY_MONGODB_URL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(port: int, test_commands: bool = False) -> list[str]:
    exe = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    command = [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"]
    # fail points (configureFailPoint) let fault tests cut a job's path at an exact command
    return [*command, "--enable-test-commands"] if test_commands else command


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            MongoClient(url, serverSelectionTimeoutMS=500).admin.command("ping")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class TestServer:
    """A server of our own, or the one named by CORE4CELERY_MONGODB_URL."""

    def __init__(self, log_path: Path | None = None, test_commands: bool = False) -> None:
        self.external = os.environ.get(ENV_URL)
        self.test_commands = test_commands
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path

    def start(self) -> str:
        if self.external:
            wait_ready(self.external)
            return self.external
        port = free_port()
        log = open(self.log_path or os.devnull, "wb")
        self.proc = subprocess.Popen(server_command(port, self.test_commands), stdout=log, stderr=subprocess.STDOUT)
        url = f"mongodb://127.0.0.1:{port}/"
        wait_ready(url)
        return url

    def start_database(self, name: str) -> str:
        """Start, then the URL of database ``name`` (an external URL is used as it is)."""
        base = self.start()
        return base if self.external else database_url(base, name)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def database_url(base: str, database: str) -> str:
    """The same server, another database; keeps query options such as retryWrites=false."""
    head, _, query = base.partition("?")
    host = head.split("//", 1)[1].split("/", 1)[0]
    scheme = head.split("//", 1)[0]
    options = query or "retryWrites=false"
    if "retryWrites" not in options:
        options += "&retryWrites=false"
    return f"{scheme}//{host}/{database}?{options}"
