"""An app that names the registry URL (with its password) in ``app.conf``, as a user would.

Used by ``tests/integration/test_secrets.py``; the URL comes from the
environment variable ``TEST_SECRET_URL`` so that only this app holds it.
"""

from __future__ import annotations

import os

from celery import Celery

from core4celery import Core4, Core4Task

URL = os.environ["TEST_SECRET_URL"]

app = Celery("secret", broker=URL, backend=URL)
app.conf.core4celery_mongodb_url = URL
app.conf.core4celery_heartbeat_interval = 0.5
app.conf.core4celery_worker_timeout = 6.0
app.conf.worker_hijack_root_logger = False
core4 = Core4(app)


@app.task(base=Core4Task, bind=True, name="s.square", author="test")
def square(self: Core4Task, n: int) -> int:
    self.progress(0.5, "half way")
    return n * n


@app.task(name="s.plain")
def plain(n: int) -> int:
    return n + 1
