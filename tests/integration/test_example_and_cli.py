"""The PrimeJob example end to end, and the CLI against the real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from core4celery.cli import main
from tests.integration.conftest import Cluster
from tests.workers import REPO


def count_primes(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return sum(sieve)


def test_prime_example_end_to_end(db_url: str) -> None:
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": db_url, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "examples.prime.run", "--end", "200000", "--size", "20000", "--workers", "2"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"primes found: {count_primes(200_000):,} in" in out.stdout


def cli(url: str, *args: str) -> tuple[int, str]:
    sys.modules.pop("tests.apps.jobs", None)  # the app module reads its URL at import
    result = CliRunner().invoke(main, ["-A", "tests.apps.jobs:app", *args],
                                env={"CORE4CELERY_MONGODB_URL": url})
    return result.exit_code, result.output


def test_cli_enqueue_list_info_detail(db_url: str) -> None:
    code, out = cli(db_url, "enqueue", "t.record", 'tag="from-cli"')
    assert code == 0, out
    job_id = out.strip()
    code, out = cli(db_url, "list")
    assert code == 0 and job_id in out and "pending" in out and "t.record" in out
    code, out = cli(db_url, "info")
    assert code == 0 and "pending" in out and "t.record" in out
    code, out = cli(db_url, "detail", job_id)
    assert code == 0 and json.loads(out)["args"] == {"tag": "from-cli"}
    code, out = cli(db_url, "enqueue", "t.record", "tag=not-json")
    assert code != 0 and "not JSON" in out
    code, out = cli(db_url, "detail", "0" * 24)
    assert code != 0 and "no job" in out


def test_installed_command_runs(cluster: Cluster) -> None:
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": cluster.url, "PYTHONPATH": str(REPO)}
    exe = os.path.join(os.path.dirname(sys.executable), "core4celery")
    out = subprocess.run([exe, "-A", "tests.apps.jobs", "enqueue", "t.square", "n=6"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cluster.worker()
    assert cluster.core4.AsyncResult(out.stdout.strip()).get(timeout=60) == 36


def test_cli_masks_password_when_unreachable() -> None:
    code, out = cli("mongodb://alice:s3cret@127.0.0.1:9/x?serverSelectionTimeoutMS=300", "list")
    assert code != 0
    assert "s3cret" not in out and "****" in out
