"""The click CLI against the real server and real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from core4celery.cli import main
from tests.integration.conftest import Cluster
from tests.workers import REPO, wait_for


def cli(url: str, *args: str) -> tuple[int, str, str]:
    sys.modules.pop("tests.apps.jobs", None)  # the app module reads its URL at import
    result = CliRunner().invoke(main, ["-A", "tests.apps.jobs:app", *args], env={"CORE4CELERY_MONGODB_URL": url})
    return result.exit_code, result.stdout, result.stderr


def ok(url: str, *args: str) -> str:
    code, out, err = cli(url, *args)
    assert code == 0, out + err
    return out


def test_operations_by_name_and_id(cluster: Cluster) -> None:
    url = cluster.url
    assert ok(url, "pause") == "dispatching paused\n"
    assert ok(url, "pause") == "dispatching was paused already\n"
    first, second = ok(url, "enqueue", "t.square", "n=1").strip(), ok(url, "enqueue", "t.square", "n=2").strip()
    listing = ok(url, "list")
    assert "dispatching is paused" in listing and "worker" in listing.splitlines()[1]
    assert all(job in listing for job in (first, second))
    killed = ok(url, "kill", "t.square")
    assert killed.splitlines() == [f"killed {first}", f"killed {second}"]
    assert f"{first} killed   ...K" in ok(url, "list", "killed")
    restarted = ok(url, "restart", first)
    assert restarted.startswith(f"restarted {first} as ")
    new_id = restarted.split()[-1]
    code, _, err = cli(url, "restart", first)
    assert code == 1 and f"refused {first}: cannot restart job {first}: it was restarted as {new_id}" in err
    assert ok(url, "remove", "--hard", "t.square").splitlines() == [f"removed {second}", f"removed {new_id}"]
    code, _out, err = cli(url, "kill", "no.such.job")
    assert code == 1 and "neither a job id nor the name of a live job" in err
    assert '"journaled": true' in ok(url, "detail", "t.square")
    info = ok(url, "info")
    assert "no jobs." in info
    assert ok(url, "resume") == "dispatching resumed\n"
    assert ok(url, "resume") == "dispatching was not paused\n"


def test_workers_and_watch(cluster: Cluster) -> None:
    proc = cluster.worker("w1", concurrency=2)
    url = cluster.url
    workers = ok(url, "workers")
    row = next(line for line in workers.splitlines() if line.startswith(f"{proc.name}@"))
    slots, state, cpu, free, gate, running = row.split()[2:]
    assert (slots, state, gate, running) == ("2", "working", "open", "0")
    assert cpu.endswith("%") and float(free) > 0  # the resource gate's means
    mother = ok(url, "enqueue", "t.mother", "chunks=4", "size=5").strip()
    watched = ok(url, "watch", mother, "--interval", "0.2", "--timeout", "60")
    assert "children: 4/4 done" in watched or "children:" in watched
    assert f"{mother} complete" in watched.splitlines()[-1]
    failing = ok(url, "enqueue", "t.flaky", "fail_times=5").strip()
    code, out, _ = cli(url, "watch", failing, "--interval", "0.2", "--timeout", "60")
    assert code == 1 and f"{failing} error" in out
    assert ok(url, "watch", "--interval", "0.2", "--timeout", "30").endswith("no active jobs left.\n")
    code, out, err = cli(url, "watch", "0" * 24)
    assert code == 1 and "no job with id" in err


def test_halt_through_cli(cluster: Cluster) -> None:
    proc = cluster.worker("w1", concurrency=1)
    assert "halt requested at" in ok(cluster.url, "halt")
    wait_for(lambda: proc.proc.poll() is not None, 60, what="the worker to exit")
    assert "no workers." in ok(cluster.url, "workers")


def test_celery_subcommand(cluster: Cluster) -> None:
    """The entry point makes `celery -A app core4 ...` work like the core4celery command."""
    cluster.core4.enqueue("t.square", n=3)
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": cluster.url, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.apps.jobs", "core4", "info"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pending  t.square" in out.stdout


def test_cli_enqueue_list_info_detail(db_url: str) -> None:
    code, out, err = cli(db_url, "enqueue", "t.record", 'tag="from-cli"')
    assert code == 0, out
    job_id = out.strip()
    code, out, err = cli(db_url, "list")
    assert code == 0 and job_id in out and "pending" in out and "t.record" in out
    code, out, err = cli(db_url, "info")
    assert code == 0 and "pending" in out and "t.record" in out
    code, out, err = cli(db_url, "detail", job_id)
    assert code == 0 and json.loads(out)["args"] == {"tag": "from-cli"}
    code, out, err = cli(db_url, "enqueue", "t.record", "tag=not-json")
    assert code != 0 and "not JSON" in err
    code, out, err = cli(db_url, "detail", "0" * 24)
    assert code != 0 and "no job" in err


def test_installed_command_runs(cluster: Cluster) -> None:
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": cluster.url, "PYTHONPATH": str(REPO)}
    exe = os.path.join(os.path.dirname(sys.executable), "core4celery")
    out = subprocess.run([exe, "-A", "tests.apps.jobs", "enqueue", "t.square", "n=6"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cluster.worker()
    assert cluster.core4.AsyncResult(out.stdout.strip()).get(timeout=60) == 36


def test_cli_masks_password_when_unreachable() -> None:
    code, out, err = cli("mongodb://alice:s3cret@127.0.0.1:9/x?serverSelectionTimeoutMS=300", "list")
    assert code != 0
    assert "s3cret" not in out + err and "****" in err


def test_celery_purge_removes_waiting_jobs_from_the_registry_too(cluster: Cluster) -> None:
    """The backlog of core4 jobs is in the registry: emptying the broker alone left it to run."""
    core4 = cluster.core4
    waiting = [core4.enqueue("t.square", n=n) for n in range(3)]  # no worker yet: they wait
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": cluster.url, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.apps.jobs", "purge", "-f"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Purged 3 messages" in out.stdout, out.stdout + out.stderr
    for job_id in waiting:
        doc = core4.get(job_id)
        assert doc.get("journaled") and doc["removed_at"] is not None
    kept = core4.enqueue("t.square", n=9)
    code, printed, _ = cli(cluster.url, "purge", "t.record", "-f")  # another name: nothing to remove
    assert code == 0 and printed.strip() == "removed 0 waiting job(s)"
    code, printed, _ = cli(cluster.url, "purge", "t.square", "-f")
    assert code == 0 and printed.strip() == "removed 1 waiting job(s)" and core4.get(kept).get("journaled")
    cluster.worker()
    assert core4.AsyncResult(core4.enqueue("t.square", n=4)).get(timeout=60) == 16  # new work still runs
