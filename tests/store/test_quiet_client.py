"""The client library logs through ``logging`` only: a script that configured no logging sees nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.workers import REPO

SCRIPT = """
from tests.apps.jobs import build
app, core4 = build({url!r})
core4.pause()
job = core4.enqueue("t.square", n=2)
core4.kill(job)
core4.remove(job)
core4.resume()
core4.close()
"""


def test_operations_print_nothing_on_the_callers_stderr(db_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    env.pop("CORE4CELERY_MONGODB_URL", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(url=db_url)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and out.stdout == ""
