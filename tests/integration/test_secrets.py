"""No password shown anywhere a user or a remote client can look, on a server that requires one.

SecantusDB runs with ``--auth`` and a user whose password holds ``/``, ``@``
and ``:`` (percent-encoded in the URL). A worker with events, Flower, the CLI,
``celery inspect conf/stats/report`` and ``celery report`` run against it; every
output, log, event and Flower page is searched for the password, raw and
encoded. The app names the URL in ``app.conf`` (``core4celery_mongodb_url``)
as well as the broker and the result backend.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from pymongo import MongoClient

from core4celery.config.settings import Settings
from core4celery.devserver import free_port, server_command, wait_ready
from core4celery.errors import ConfigurationError
from core4celery.store.connection import Connection
from tests.conftest import ARTIFACTS
from tests.workers import REPO, WorkerProcess, wait_for

PASSWORD = "s3cr/t@pa:ss"
USER = "core4"
CLI = os.path.join(os.path.dirname(sys.executable), "core4celery")
FORMS = {PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD), quote(PASSWORD)}


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[str, int]]:
    """(URL with the password, port) of a SecantusDB that requires SCRAM authentication."""
    storage = Path(tempfile.mkdtemp(prefix="core4celery-auth-"))
    port = free_port()
    command = server_command(port)
    command[command.index(":memory:")] = str(storage)
    log = open(ARTIFACTS / "auth-server.log", "wb")
    provision = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    wait_ready(f"mongodb://127.0.0.1:{port}/")
    with MongoClient(f"mongodb://127.0.0.1:{port}/") as client:
        client.admin.command("createUser", USER, pwd=PASSWORD, roles=["root"])
    provision.terminate()
    provision.wait(30)
    server = subprocess.Popen([*command, "--auth"], stdout=log, stderr=subprocess.STDOUT)
    url = f"mongodb://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/secret?authSource=admin&retryWrites=false"
    wait_ready(url)
    yield url, port
    server.terminate()
    server.wait(30)
    shutil.rmtree(storage, ignore_errors=True)


def env_for(url: str) -> dict[str, str]:
    return {**os.environ, "TEST_SECRET_URL": url, "PYTHONPATH": str(REPO), "FLOWER_UNAUTHENTICATED_API": "true"}


def run(url: str, *args: str, timeout: float = 120) -> str:
    out = subprocess.run(list(args), env=env_for(url), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr


def celery(url: str, *args: str) -> str:
    return run(url, sys.executable, "-m", "celery", "-A", "tests.apps.secret", *args)


def fetch(address: str) -> str:
    with urllib.request.urlopen(address, timeout=30) as response:
        return str(response.read().decode())


def leaks(text: str) -> list[str]:
    return [form for form in FORMS if form in text]


def test_the_password_is_shown_nowhere(secured: tuple[str, int]) -> None:
    url, _ = secured
    seen: dict[str, str] = {}
    worker = WorkerProcess(url, "secret", concurrency=1, app="tests.apps.secret", log_dir=ARTIFACTS,
                           extra=("-E",), env={"TEST_SECRET_URL": url}).start()
    flower_port = free_port()
    flower_log = ARTIFACTS / "secret-flower.log"
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.apps.secret", "flower",
                               "--address=127.0.0.1", f"--port={flower_port}"], env=env_for(url), cwd=REPO,
                              stdout=open(flower_log, "wb"), stderr=subprocess.STDOUT)
    events = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.apps.secret", "events", "--dump"],
                              env=env_for(url), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        seen["ping"] = wait_for(lambda: "pong" in (out := celery(url, "inspect", "ping")) and out, 60,
                                interval=1, what="the worker to answer")
        base = f"http://127.0.0.1:{flower_port}"
        wait_for(lambda: fetch(f"{base}/api/workers?refresh=1") != "{}", 60, interval=1, what="Flower's workers")
        job = run(url, CLI, "-A", "tests.apps.secret:app", "enqueue", "s.square",
                  "n=7").strip()
        seen["cli enqueue"] = job
        seen["cli watch"] = run(url, CLI, "-A", "tests.apps.secret:app", "watch",
                                job, "--timeout", "60")
        for command in (["list", "complete"], ["info", job], ["workers"], ["detail", job]):
            seen[f"cli {command[0]}"] = run(url, CLI, "-A",
                                            "tests.apps.secret:app", *command)
        seen["cli error"] = run(url, CLI, "-A", "tests.apps.secret:app", "info",
                                "x")
        for command in (["inspect", "conf"], ["inspect", "stats"], ["inspect", "report"], ["report"],
                        ["inspect", "registered"], ["status"]):
            # inspect waits 1 s for replies: on a loaded machine a worker can miss that once, so ask again
            seen[" ".join(command)] = wait_for(
                lambda command=command: (out := celery(url, *command)) and "No nodes replied" not in out and out, 30,
                interval=1, what=f"an answer to {' '.join(command)}")
        assert "core4celery_mongodb_url" in seen["inspect conf"] and "****" in seen["inspect conf"]
        assert "hostname" in seen["inspect stats"]
        seen["flower api workers"] = wait_for(  # the config tab's source; each refresh asks the workers again
            lambda: "core4celery_mongodb_url" in (page := fetch(f"{base}/api/workers?refresh=1")) and page, 60,
            interval=1, what="the worker's configuration in Flower")
        name = next(iter(json.loads(seen["flower api workers"])))
        wait_for(lambda: job in fetch(f"{base}/api/tasks"), 60, interval=1, what="the job in Flower")
        for page in ("/", f"/worker/{name}", "/tasks", f"/task/{job}", "/api/tasks"):  # /broker: not for mongodb
            seen[f"flower {page}"] = fetch(base + page)
    finally:
        events.terminate()
        seen["events"] = events.communicate(timeout=30)[0]
        flower.terminate()
        flower.wait(30)
        worker.stop()
    seen["worker log"] = worker.output()
    seen["flower log"] = flower_log.read_text(errors="replace")
    assert "task-succeeded" in seen["events"] or "succeeded" in seen["events"], seen["events"][-2000:]
    found = {where: leaks(text) for where, text in seen.items() if leaks(text)}
    assert found == {}, {where: seen[where][:3000] for where in found}


def test_a_wrong_password_names_the_user_and_not_the_password(secured: tuple[str, int]) -> None:
    url, _ = secured
    wrong = url.replace(quote(PASSWORD, safe=""), quote("wr/ng@pw", safe=""))
    with pytest.raises(ConfigurationError) as caught:
        Connection(Settings(mongodb_url=wrong)).ping()
    message = str(caught.value)
    assert f"authentication failed for user '{USER}'" in message
    assert not leaks(message) and "wr/ng" not in message and "wr%2Fng" not in message
